//! imc-apiserver
