//! The transport side: API Gateway requests (an HTTP API's or a REST API's, through `lambda_http`)
//! and SQS batches in, the contract's responses out. Handlers are generic over the ports of `twochan-domain`.

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
    LambdaEvent, Service,
    aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayV2httpResponse},
    request::LambdaRequest,
};
use twochan_domain::DomainError;

/// Runs an HTTP function's Lambda loop: every request goes to `handler`, one of
/// [`routes::registration`], [`routes::payment_request`] or [`routes::confirmation`] with the
/// function's app.
///
/// `lambda_http` turns the API Gateway event into an `http::Request` with `unwrap`s that a
/// client can reach (a query string with `<`, a `Host` that is not a host), before any handler
/// runs; a panic there would answer 502 without the contract's JSON. So the event loses what the
/// functions never read (query string, `Host`) first, and a conversion that panics all the same
/// answers the contract's 400.
pub async fn serve_http<H, F>(handler: H) -> Result<(), lambda_http::Error>
where
    H: Fn(lambda_http::Request) -> F + Sync,
    F: Future<Output = lambda_http::Response<lambda_http::Body>> + Send,
{
    let handler = &handler;
    lambda_runtime::run(lambda_http::service_fn(
        move |event: LambdaEvent<LambdaRequest>| async move {
            let handler = lambda_http::service_fn(move |req: lambda_http::Request| async move {
                Ok::<_, std::convert::Infallible>(answer(handler(req)).await)
            });
            let mut adapter = lambda_http::Adapter::from(handler);
            let event = without_unread_parts(event);
            let rest = matches!(event.payload, LambdaRequest::ApiGatewayV1(_));
            // Both answers serialize to the response format of the API that sent the event.
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
                    unreadable_request(rest)
                }
            };
            response.map_err(lambda_http::Error::from)
        },
    ))
    .await
}

/// A handler's answer; a panic in it is a 500 with the contract's JSON, not a dead runtime.
async fn answer(
    handling: impl Future<Output = lambda_http::Response<lambda_http::Body>>,
) -> lambda_http::Response<lambda_http::Body> {
    std::panic::AssertUnwindSafe(handling)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| http::error_response(&DomainError::Internal("handler panicked".into())))
}

pub fn without_unread_parts(mut event: LambdaEvent<LambdaRequest>) -> LambdaEvent<LambdaRequest> {
    let host = lambda_http::http::header::HOST;
    let path = match &mut event.payload {
        LambdaRequest::ApiGatewayV2(ag) => {
            ag.raw_query_string = None;
            ag.query_string_parameters = Default::default();
            ag.headers.remove(&host);
            ag.request_context.domain_name = None;
            ag.raw_path.as_mut()
        }
        LambdaRequest::ApiGatewayV1(ag) => {
            ag.query_string_parameters = Default::default();
            ag.multi_value_query_string_parameters = Default::default();
            ag.headers.remove(&host);
            ag.multi_value_headers.remove(&host);
            ag.request_context.domain_name = None;
            ag.path.as_mut()
        }
        _ => None,
    };
    if let Some(path) = path.filter(|p| !p.starts_with('/')) {
        path.insert(0, '/');
    }
    event
}

/// The contract's 400 for an event `lambda_http` could not turn into a request, in the response
/// format of a REST API (`rest`) or an HTTP API.
fn unreadable_request(rest: bool) -> serde_json::Result<serde_json::Value> {
    let resp = http::error_response(&DomainError::InvalidRequest(
        "the request could not be read".into(),
    ));
    let (parts, body) = resp.into_parts();
    if rest {
        let mut out = ApiGatewayProxyResponse::default();
        out.status_code = i64::from(parts.status.as_u16());
        out.multi_value_headers = parts.headers;
        out.body = Some(body);
        return serde_json::to_value(out);
    }
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.headers = parts.headers;
    out.body = Some(body);
    serde_json::to_value(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::{Context, RequestExt};

    fn converted(event: serde_json::Value) -> lambda_http::Request {
        let payload: LambdaRequest = serde_json::from_value(event).unwrap();
        let event = without_unread_parts(LambdaEvent::new(payload, Context::default()));
        lambda_http::Request::from(event.payload)
    }

    /// A REST API's event loses its query string and `Host` as an HTTP API's does: a `Host`
    /// that is no host name would make lambda_http's conversion panic.
    #[test]
    fn rest_api_events_lose_the_unread_parts() {
        let req = converted(http::tests::rest_event(
            "/v1/payments/pay_1/cancel",
            "not a host",
        ));
        assert!(req.headers().get("host").is_none());
        assert!(req.uri().query().is_none());
        assert!(req.query_string_parameters_ref().is_none());
        assert_eq!(req.raw_http_path(), "/v1/payments/pay_1/cancel");
        let req = converted(http::tests::rest_event("v1/balance", "h"));
        assert_eq!(req.raw_http_path(), "/v1/balance");
    }

    #[test]
    fn the_unreadable_answer_fits_the_api_kind() {
        // A REST API takes the headers from `multiValueHeaders`; `cookies` is the HTTP API's.
        let rest = unreadable_request(true).unwrap();
        assert_eq!(rest["statusCode"], 400);
        assert_eq!(
            rest["multiValueHeaders"]["content-type"][0],
            "application/json"
        );
        assert!(rest.get("cookies").is_none());
        let http = unreadable_request(false).unwrap();
        assert_eq!(http["statusCode"], 400);
        assert_eq!(http["headers"]["content-type"], "application/json");
        assert!(http.get("cookies").is_some());
    }
}
