//! Exporter throughput: ours against opentelemetry-otlp's batch processor (see BENCHMARKS.md).

fn main() {}
