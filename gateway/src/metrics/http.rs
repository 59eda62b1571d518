//! The metrics endpoint: [`bind`] (checked with the configuration) and
//! [`serve_http`], which renders the registry on `GET /metrics` (and `/`).
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Metrics, MetricsError};

/// Serves `GET /metrics` (and `/`) on `listener` until `shutdown` completes.
pub async fn serve_http<F>(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: F,
) -> Result<(), MetricsError>
where
    F: Future<Output = ()> + Send + 'static,
{
    use axum::http::{StatusCode, header};
    use axum::routing::get;

    async fn scrape(
        axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        match metrics.render() {
            Ok(text) => (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            Err(err) => {
                tracing::warn!(error = %crate::error_chain::error_chain(&err), "rendering metrics failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
            }
        }
    }

    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(scrape))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MetricsError::Serve)
}

/// Binds the metrics listener (part of validating the configuration).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}
