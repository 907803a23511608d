//! Logs and traces.
//!
//! [`init`] installs one `tracing` subscriber: an EnvFilter from `--log`/`AUTOCRANE_LOG`, plain or
//! JSON lines on stderr, and — when `OTEL_EXPORTER_OTLP_ENDPOINT` is set — an OpenTelemetry layer
//! exporting spans over OTLP/gRPC (the other standard `OTEL_EXPORTER_OTLP_*` variables apply too;
//! `OTEL_SERVICE_NAME` overrides the service name). The W3C trace-context propagator is always
//! installed, so context flows through a process even when it exports nothing.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource, propagation::TraceContextPropagator, runtime::Tokio, trace::SdkTracerProvider,
    trace::span_processor_with_async_runtime::BatchSpanProcessor,
};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::{
    RuntimeError,
    args::{LogFormat, TelemetryArgs},
};

/// The environment variable that switches OTLP export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Keeps the exporter alive; call [`TelemetryGuard::shutdown`] before exiting to flush spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter. Blocking work runs off the async workers.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let flushed = tokio::task::spawn_blocking(move || {
                let _ = provider.force_flush();
                provider.shutdown()
            })
            .await;
            if let Ok(Err(err)) = flushed {
                eprintln!("flushing traces failed: {err}");
            }
        }
    }
}

/// Installs logging and tracing for a process named `service_name`, exporting spans over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Must be called inside a tokio runtime when OTLP export is
/// on. Calling it twice keeps the first subscriber.
pub fn init(service_name: &str, args: &TelemetryArgs) -> Result<TelemetryGuard, RuntimeError> {
    let endpoint = std::env::var(OTLP_ENDPOINT_ENV)
        .ok()
        .filter(|value| !value.is_empty());
    init_with_otlp(service_name, args, endpoint.as_deref())
}

/// Like [`init`], with the OTLP endpoint given explicitly (`None`: no export).
pub fn init_with_otlp(
    service_name: &str,
    args: &TelemetryArgs,
    endpoint: Option<&str>,
) -> Result<TelemetryGuard, RuntimeError> {
    let TelemetryArgs { log, log_format } = args;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_new(log)
        .map_err(|err| RuntimeError::Telemetry(format!("--log {log:?}: {err}")))?;
    let fmt_layer = match log_format {
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(true)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .boxed(),
    };

    let (otel_layer, provider) = match endpoint {
        Some(endpoint) => {
            let provider = otlp_provider(service_name, endpoint)?;
            let tracer = provider.tracer(service_name.to_string());
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };

    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .is_ok();
    if installed {
        tracing::debug!(
            service = service_name,
            otlp = provider.is_some(),
            "Telemetry initialised"
        );
    }
    Ok(TelemetryGuard { provider })
}

fn otlp_provider(service_name: &str, endpoint: &str) -> Result<SdkTracerProvider, RuntimeError> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|err| RuntimeError::Telemetry(format!("OTLP exporter for {endpoint}: {err}")))?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_string());
    // The async-runtime batch processor runs the tonic exporter on our tokio runtime; the default
    // thread-based one would call tonic outside any reactor.
    let processor = BatchSpanProcessor::builder(exporter, Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build())
}
