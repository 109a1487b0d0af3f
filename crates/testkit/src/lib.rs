//! imc-testkit
