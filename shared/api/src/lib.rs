//! The transport side: API Gateway v2 requests (through `lambda_http`) and SQS batches in, the
//! contract's responses out. Handlers are generic over the ports of `twochan-domain`.

mod extract;
pub mod http;
pub mod refunds;
mod router;
pub mod routes;
pub mod settlement;
pub mod sweeper;
pub mod telemetry;
mod usecase;
pub mod view;
pub mod webhooks;

pub use routes::App;

use futures_util::FutureExt;
use lambda_http::{
    LambdaEvent, Service, aws_lambda_events::apigw::ApiGatewayV2httpResponse,
    request::LambdaRequest,
};
use twochan_domain::DomainError;

/// Runs an HTTP function's Lambda loop: every request goes through [`routes::handle`].
///
/// `lambda_http` turns the API Gateway event into an `http::Request` with `unwrap`s that a
/// client can reach (a query string with `<`, a `Host` that is not a host), before any handler
/// runs; a panic there would answer 502 without the contract's JSON. So the event loses what the
/// functions never read (query string, `Host`) first, and a conversion that panics all the same
/// answers the contract's 400.
pub async fn serve_http<S, Q, E>(
    app: App<S, Q, E>,
    function: routes::Function,
) -> Result<(), lambda_http::Error>
where
    S: routes::Store,
    Q: twochan_domain::ports::SettlementQueue,
    E: twochan_domain::ports::EventQueue,
{
    let app = &app;
    lambda_runtime::run(lambda_http::service_fn(
        move |event: LambdaEvent<LambdaRequest>| async move {
            let handler = lambda_http::service_fn(move |req: lambda_http::Request| async move {
                Ok::<_, std::convert::Infallible>(answer(app, function, req).await)
            });
            let mut adapter = lambda_http::Adapter::from(handler);
            let event = without_unread_parts(event);
            // Both answers serialize to API Gateway's response format.
            let response = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                adapter.call(event)
            })) {
                Ok(response) => serde_json::to_value(response.await?),
                Err(_) => {
                    // Our 400 to the client, but a lambda_http regression to us: make it visible.
                    tracing::error!(
                        outcome = "event_conversion_panic",
                        status = 400,
                        "lambda_http could not convert the event"
                    );
                    serde_json::to_value(unreadable_request())
                }
            };
            response.map_err(lambda_http::Error::from)
        },
    ))
    .await
}

/// One request through the router. A panic is a bug; the caller still gets the contract's 500,
/// never a dropped connection.
async fn answer<S, Q, E>(
    app: &App<S, Q, E>,
    function: routes::Function,
    req: lambda_http::Request,
) -> lambda_http::Response<lambda_http::Body>
where
    S: routes::Store,
    Q: twochan_domain::ports::SettlementQueue,
    E: twochan_domain::ports::EventQueue,
{
    std::panic::AssertUnwindSafe(routes::handle(app, function, req))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| http::error_response(&DomainError::Internal("handler panicked".into())))
}

/// The event without the parts no route reads and `lambda_http` may choke on: the query string
/// (the contract has none), `Host` and the API's domain name (only used to build an absolute
/// URL), and a path that does not start with `/` (API Gateway always sends one).
pub fn without_unread_parts(mut event: LambdaEvent<LambdaRequest>) -> LambdaEvent<LambdaRequest> {
    if let LambdaRequest::ApiGatewayV2(ag) = &mut event.payload {
        ag.raw_query_string = None;
        ag.query_string_parameters = Default::default();
        ag.headers.remove(lambda_http::http::header::HOST);
        ag.request_context.domain_name = None;
        if let Some(path) = ag.raw_path.as_mut().filter(|p| !p.starts_with('/')) {
            path.insert(0, '/');
        }
    }
    event
}

/// The contract's 400 for an event `lambda_http` could not turn into a request.
fn unreadable_request() -> ApiGatewayV2httpResponse {
    let resp = http::error_response(&DomainError::InvalidRequest(
        "the request could not be read".into(),
    ));
    let (parts, body) = resp.into_parts();
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.headers = parts.headers;
    out.body = Some(body);
    out
}
