//! imc-snapshot
