//! imc-matching
