//! The route table, which function serves which route, and `handle`: the entry point of every
//! HTTP function, where a request gets its span, its use case and its one outcome line.

use lambda_http::{Body, Request, RequestExt, Response, http::Method};
use tracing::Instrument;
use twochan_domain::{
    DomainError,
    ports::{
        Devices, Directory, EventQueue, Ledger, Payments, Refunds, SettlementQueue,
        WebhookEndpoints,
    },
};

use crate::http::{body_bytes, error_response, route_segments};
use crate::usecase::{App, confirmation, payment_request, registration};

/// The route table: which function serves which `(method, path)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    CreateChallenge,
    RegisterDevice,
    DeregisterDevice(String),
    CreatePayment,
    GetPayment(String),
    CancelPayment(String),
    Balance,
    PendingPayments,
    ConfirmPayment(String),
    DeclinePayment(String),
    CreateRefund(String),
    ListRefunds(String),
    PutWebhookEndpoint,
    GetWebhookEndpoint,
    DeleteWebhookEndpoint,
}

impl Route {
    pub fn of(method: &Method, segments: &[String]) -> Option<Route> {
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        Some(match (method.as_str(), segs.as_slice()) {
            ("POST", ["devices", "challenges"]) => Route::CreateChallenge,
            ("POST", ["devices"]) => Route::RegisterDevice,
            ("DELETE", ["devices", code]) => Route::DeregisterDevice((*code).to_owned()),
            ("POST", ["payments"]) => Route::CreatePayment,
            ("GET", ["payments", id]) => Route::GetPayment((*id).to_owned()),
            ("POST", ["payments", id, "cancel"]) => Route::CancelPayment((*id).to_owned()),
            ("GET", ["balance"]) => Route::Balance,
            ("GET", ["pending-payments"]) => Route::PendingPayments,
            ("POST", ["payments", id, "confirm"]) => Route::ConfirmPayment((*id).to_owned()),
            ("POST", ["payments", id, "decline"]) => Route::DeclinePayment((*id).to_owned()),
            ("POST", ["payments", id, "refunds"]) => Route::CreateRefund((*id).to_owned()),
            ("GET", ["payments", id, "refunds"]) => Route::ListRefunds((*id).to_owned()),
            ("PUT", ["webhook-endpoint"]) => Route::PutWebhookEndpoint,
            ("GET", ["webhook-endpoint"]) => Route::GetWebhookEndpoint,
            ("DELETE", ["webhook-endpoint"]) => Route::DeleteWebhookEndpoint,
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Route::CreateChallenge => "create_challenge",
            Route::RegisterDevice => "register_device",
            Route::DeregisterDevice(_) => "deregister_device",
            Route::CreatePayment => "create_payment",
            Route::GetPayment(_) => "get_payment",
            Route::CancelPayment(_) => "cancel_payment",
            Route::Balance => "balance",
            Route::PendingPayments => "pending_payments",
            Route::ConfirmPayment(_) => "confirm_payment",
            Route::DeclinePayment(_) => "decline_payment",
            Route::CreateRefund(_) => "create_refund",
            Route::ListRefunds(_) => "list_refunds",
            Route::PutWebhookEndpoint => "put_webhook_endpoint",
            Route::GetWebhookEndpoint => "get_webhook_endpoint",
            Route::DeleteWebhookEndpoint => "delete_webhook_endpoint",
        }
    }
}

/// Which group of routes a function serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Registration,
    PaymentRequest,
    Confirmation,
}

impl Function {
    pub fn serves(self, route: &Route) -> bool {
        use Route::*;
        match self {
            Function::Registration => {
                matches!(
                    route,
                    CreateChallenge | RegisterDevice | DeregisterDevice(_)
                )
            }
            Function::PaymentRequest => {
                matches!(
                    route,
                    CreatePayment
                        | GetPayment(_)
                        | CancelPayment(_)
                        | Balance
                        | CreateRefund(_)
                        | ListRefunds(_)
                        | PutWebhookEndpoint
                        | GetWebhookEndpoint
                        | DeleteWebhookEndpoint
                )
            }
            Function::Confirmation => {
                matches!(
                    route,
                    PendingPayments | ConfirmPayment(_) | DeclinePayment(_)
                )
            }
        }
    }
}

/// Every port an HTTP function's store provides (the DynamoDB adapter; the tests' in-memory world).
pub trait Store: Directory + Devices + Payments + Ledger + Refunds + WebhookEndpoints {}
impl<T: Directory + Devices + Payments + Ledger + Refunds + WebhookEndpoints> Store for T {}

/// Every request of the tests' all-in-one app: each route to the function that serves it, as the
/// deployed API does. The functions themselves use [`registration`], [`payment_request`] and
/// [`confirmation`], each compiled with its own routes only.
pub async fn handle<S, Q, E>(app: &App<S, Q, E>, function: Function, req: Request) -> Response<Body>
where
    S: Store,
    Q: SettlementQueue,
    E: EventQueue,
{
    match function {
        Function::Registration => registration(app, req).await,
        Function::PaymentRequest => payment_request(app, req).await,
        Function::Confirmation => confirmation(app, req).await,
    }
}

/// The registration function's requests. It has no settlement queue: `Q` is any type, and a use
/// case of its own that enqueued would not compile. Its app holds `()` there, which serves its
/// own routes:
///
/// ```no_run
/// use twochan_api::{App, routes};
/// async fn serve<S: routes::Store, E: twochan_domain::ports::EventQueue>(
///     app: &App<S, (), E>,
///     req: lambda_http::Request,
/// ) {
///     routes::registration(app, req).await;
/// }
/// ```
///
/// and cannot be wired to the function that settles:
///
/// ```compile_fail
/// use twochan_api::{App, routes};
/// async fn serve<S: routes::Store, E: twochan_domain::ports::EventQueue>(
///     app: &App<S, (), E>,
///     req: lambda_http::Request,
/// ) {
///     routes::confirmation(app, req).await;
/// }
/// ```
pub async fn registration<S: Store, Q, E: EventQueue>(
    app: &App<S, Q, E>,
    req: Request,
) -> Response<Body> {
    serve(
        req,
        Function::Registration,
        async |route: &Route, req: &Request| match route {
            Route::CreateChallenge => registration::create_challenge(app, req).await,
            Route::RegisterDevice => registration::register_device(app, req).await,
            Route::DeregisterDevice(code) => registration::deregister_device(app, req, code).await,
            _ => Err(DomainError::NotFound),
        },
    )
    .await
}

/// The payment-request function's requests (the POS side); no settlement queue either.
pub async fn payment_request<S: Store, Q, E: EventQueue>(
    app: &App<S, Q, E>,
    req: Request,
) -> Response<Body> {
    serve(
        req,
        Function::PaymentRequest,
        async |route: &Route, req: &Request| match route {
            Route::CreatePayment => payment_request::create_payment(app, req).await,
            Route::GetPayment(id) => payment_request::get_payment(app, req, id).await,
            Route::CancelPayment(id) => payment_request::cancel_payment(app, req, id).await,
            Route::Balance => payment_request::balance(app, req).await,
            Route::CreateRefund(id) => payment_request::create_refund(app, req, id).await,
            Route::ListRefunds(id) => payment_request::list_refunds(app, req, id).await,
            Route::PutWebhookEndpoint => payment_request::put_webhook_endpoint(app, req).await,
            Route::GetWebhookEndpoint => payment_request::get_webhook_endpoint(app, req).await,
            Route::DeleteWebhookEndpoint => {
                payment_request::delete_webhook_endpoint(app, req).await
            }
            _ => Err(DomainError::NotFound),
        },
    )
    .await
}

/// The confirmation function's requests (the phone side): the one that enqueues settlements.
pub async fn confirmation<S: Store, Q: SettlementQueue, E: EventQueue>(
    app: &App<S, Q, E>,
    req: Request,
) -> Response<Body> {
    serve(
        req,
        Function::Confirmation,
        async |route: &Route, req: &Request| match route {
            Route::PendingPayments => confirmation::pending_payments(app, req).await,
            Route::ConfirmPayment(id) => confirmation::confirm_payment(app, req, id).await,
            Route::DeclinePayment(id) => confirmation::decline_payment(app, req, id).await,
            _ => Err(DomainError::NotFound),
        },
    )
    .await
}

/// What every HTTP function does around its use cases: never fails, every error becomes a
/// contract response, and this is the one place a request's outcome is logged (`request done`,
/// or its refusal or failure).
async fn serve<F>(req: Request, function: Function, dispatch: F) -> Response<Body>
where
    F: AsyncFnOnce(&Route, &Request) -> Result<Response<Body>, DomainError>,
{
    let route = route_segments(&req).and_then(|segs| Route::of(req.method(), &segs));
    let Some(route) = route.filter(|r| function.serves(r)) else {
        return error_response(&DomainError::NotFound);
    };
    // The size limit comes before anything else, on every route, bodiless ones included.
    if let Err(e) = body_bytes(&req) {
        return error_response(&e);
    }
    // Every line of the request carries these; the handlers fill in the payment and device.
    let request_id = req
        .lambda_context_ref()
        .map(|c| c.request_id.clone())
        .unwrap_or_default();
    // API Gateway's own id of the request, the one its access log carries: one request can be
    // followed from the edge into the function's lines.
    let api_request_id = match req.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(c)) => c.request_id.clone(),
        Some(lambda_http::request::RequestContext::ApiGatewayV1(c)) => c.request_id.clone(),
        _ => None,
    }
    .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        route = route.name(),
        request_id = %request_id,
        api_request_id = %api_request_id,
        payment_id = tracing::field::Empty,
        unique_code_hash = tracing::field::Empty,
    );
    // `instrument`, not `enter`: the span must follow the future across its awaits.
    let result = dispatch(&route, &req).instrument(span.clone()).await;
    let _in_span = span.enter();
    match result {
        Ok(resp) => {
            tracing::info!(
                status = resp.status().as_u16(),
                outcome = "ok",
                "request done"
            );
            resp
        }
        // `error_response` logs the refusal or failure, with its code as the outcome: the one
        // line of a refused request, as use cases return their refusals without logging them.
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn route_table() {
        let r = |m: Method, p: &str| Route::of(&m, &segs(p));
        assert_eq!(r(Method::POST, "devices"), Some(Route::RegisterDevice));
        assert_eq!(
            r(Method::DELETE, "devices/abc"),
            Some(Route::DeregisterDevice("abc".into()))
        );
        assert_eq!(r(Method::GET, "devices"), None);
        assert_eq!(
            r(Method::POST, "payments/p/confirm"),
            Some(Route::ConfirmPayment("p".into()))
        );
        assert_eq!(r(Method::GET, "payments/p/confirm"), None);
        assert_eq!(r(Method::GET, "balance"), Some(Route::Balance));
        assert_eq!(
            r(Method::GET, "pending-payments"),
            Some(Route::PendingPayments)
        );
        assert!(Function::Registration.serves(&Route::RegisterDevice));
        assert!(!Function::Registration.serves(&Route::CreatePayment));
        assert!(Function::Confirmation.serves(&Route::DeclinePayment("p".into())));
        assert!(Function::PaymentRequest.serves(&Route::Balance));
    }
}
