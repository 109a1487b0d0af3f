//! imc-controllers
