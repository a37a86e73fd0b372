//! Image references with Docker's normalisation rules.
