//! imc-runtime
