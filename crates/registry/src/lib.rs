//! imc-registry
