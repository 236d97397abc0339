//! Fake upstreams of the supported platforms, for tests, benchmarks and the demo.

mod serve;
pub mod tangsengdaodao;
pub mod text;
pub mod yunhu;
pub mod yunxin;
