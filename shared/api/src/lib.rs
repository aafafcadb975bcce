//! The transport side: API Gateway v2 requests (through `lambda_http`) and SQS batches in, the
//! contract's responses out. Handlers are generic over the ports of `twochan-domain`.

pub mod http;
pub mod reconcile;
pub mod routes;
pub mod settlement;
pub mod telemetry;
pub mod view;

pub use routes::App;

use futures_util::FutureExt;

/// Runs an HTTP function's Lambda loop: every request goes through [`routes::handle`].
pub async fn serve_http<S, Q>(
    app: App<S, Q>,
    function: routes::Function,
) -> Result<(), lambda_http::Error>
where
    S: twochan_domain::ports::Directory
        + twochan_domain::ports::Devices
        + twochan_domain::ports::Payments
        + twochan_domain::ports::Idempotency
        + twochan_domain::ports::Ledger,
    Q: twochan_domain::ports::SettlementQueue,
{
    let app = &app;
    lambda_http::run(lambda_http::service_fn(
        move |req: lambda_http::Request| async move {
            // A panic is a bug; the caller still gets the contract's 500, never a dropped connection.
            let answer = std::panic::AssertUnwindSafe(routes::handle(app, function, req))
                .catch_unwind()
                .await;
            Ok::<_, std::convert::Infallible>(answer.unwrap_or_else(|_| {
                http::error_response(&twochan_domain::DomainError::Internal(
                    "handler panicked".into(),
                ))
            }))
        },
    ))
    .await
}
