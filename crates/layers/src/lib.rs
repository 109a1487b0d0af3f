//! imc-layers
