//! Test instrumentation of the SDK clients, compiled only with the `failpoints` feature (the
//! integration tests enable it; the functions' builds never do). A [`Probe`] is an SDK
//! interceptor: it records every AWS call a handler makes, and can crash the handler at a chosen
//! call, either before the request is sent or after its answer came back (the write is then done
//! but the handler never learns it). After a crash every further call fails too: a dead process
//! makes no more calls, so no clean-up code can run that a real crash would skip.
//!
//! It also records the IAM actions each call needs, with the resource each is needed on
//! ([`Probe::actions`]), read from the call's input: what `scripts/check_iam_used.py` compares
//! with each function's role (`tests/tests/iam.rs` drives the handlers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_smithy_runtime_api::{
    box_error::BoxError,
    client::{
        interceptors::{
            Intercept,
            context::{
                BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef, Input,
            },
        },
        orchestrator::Metadata,
        runtime_components::RuntimeComponents,
    },
};
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

use crate::AwsClients;

/// Where a handler dies: at its `n`-th AWS call (from 0), before sending it or after its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    Before(usize),
    After(usize),
}

/// Something to do in the middle of a handler, just before its `n`-th AWS call (e.g. stop the
/// emulator).
type Hook = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct State {
    /// `Service.Operation` of every call started, in order.
    calls: Vec<String>,
    /// The IAM actions each call started needs, `(action, resource)`, by the call's index; `None`
    /// for an operation [`required_actions`] does not know (named after execution, on `?`).
    actions: Vec<Option<Vec<(String, String)>>>,
    crash: Option<Crash>,
    crashed: bool,
    /// Calls that fail on their own, as a dependency's 5xx would: later calls go ahead.
    failing: Vec<usize>,
    hook: Option<(usize, Hook)>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("calls", &self.calls)
            .field("actions", &self.actions)
            .field("crash", &self.crash)
            .field("crashed", &self.crashed)
            .field("failing", &self.failing)
            .field("hook_at", &self.hook.as_ref().map(|(at, _)| at))
            .finish()
    }
}

/// Attach one to the clients of one simulated handler run (see [`Probe::clients`]).
#[derive(Debug, Clone, Default)]
pub struct Probe {
    state: Arc<Mutex<State>>,
}

impl Probe {
    /// Records calls, crashes nowhere.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn crashing(crash: Option<Crash>) -> Self {
        let probe = Self::default();
        probe.lock().crash = crash;
        probe
    }

    /// Fails the calls at these indices before they are sent, each on its own (a transient
    /// dependency failure, not a crash: the handler goes on and its next calls are made).
    pub fn failing(calls: impl IntoIterator<Item = usize>) -> Self {
        let probe = Self::default();
        probe.lock().failing = calls.into_iter().collect();
        probe
    }

    /// Runs `hook` just before the `at`-th AWS call is sent (the call itself then goes ahead).
    pub fn with_hook(at: usize, hook: impl Fn() + Send + Sync + 'static) -> Self {
        let probe = Self::default();
        probe.lock().hook = Some((at, Arc::new(hook)));
        probe
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a test thread panicked; the record is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls started so far, as `Service.Operation` (e.g. `DynamoDB.GetItem`).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The IAM actions the calls started so far need, in order, as `(action, resource)`: e.g.
    /// `("dynamodb:GetItem", <table>)`, `("dynamodb:Query", "<table>/index/gsi1")` for a query
    /// of an index, `("sqs:SendMessage", <queue URL>)`. A `TransactWriteItems` needs no action
    /// of its own but one per item, by its kind (`Put`: `dynamodb:PutItem`, `Update`:
    /// `dynamodb:UpdateItem`, `Delete`: `dynamodb:DeleteItem`, `ConditionCheck`:
    /// `dynamodb:ConditionCheckItem`); a `SendMessageBatch` needs `sqs:SendMessage`. An
    /// operation this does not know is listed by its name, on the resource `?`.
    pub fn actions(&self) -> Vec<(String, String)> {
        self.lock()
            .actions
            .iter()
            .flatten()
            .flatten()
            .cloned()
            .collect()
    }

    /// Whether the planned crash happened (the handler made enough calls to reach it).
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// DynamoDB and SQS clients built from `config` (the production settings: timeouts, retries)
    /// with this probe attached.
    pub fn clients(&self, config: &aws_types::SdkConfig) -> AwsClients {
        AwsClients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(config)
                    .interceptor(self.clone())
                    .build(),
            ),
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(config)
                    .interceptor(self.clone())
                    .build(),
            ),
            config: config.clone(),
        }
    }
}

/// `Service.Operation`, from the operation's metadata in the config bag.
fn operation(cfg: &ConfigBag) -> Option<String> {
    cfg.load::<Metadata>()
        .map(|m| format!("{}.{}", m.service(), m.name()))
}

/// The index of the call an execution is, kept in its config bag from `read_before_execution`
/// on, so that its actions are completed after execution even when calls run concurrently.
#[derive(Debug, Clone, Copy)]
struct CallIndex(usize);

impl Storable for CallIndex {
    type Storer = StoreReplace<Self>;
}

/// The IAM actions (with their resources) an operation's input needs, or `None` for an
/// operation not listed here. IAM authorizes a transaction item by item, and a batch of SQS
/// messages as the action of one message (SendMessageBatch is `sqs:SendMessage`).
fn required_actions(input: &Input) -> Option<Vec<(String, String)>> {
    use aws_sdk_dynamodb::operation as ddb;
    use aws_sdk_sqs::operation as sqs;
    fn on(action: &str, resource: Option<impl AsRef<str>>) -> (String, String) {
        let resource = resource.as_ref().map_or("?", AsRef::as_ref);
        (action.to_owned(), resource.to_owned())
    }
    /// A batch's action, once on each table it names.
    fn per_table<V>(action: &str, items: Option<&HashMap<String, V>>) -> Vec<(String, String)> {
        let mut tables: Vec<&String> = items.into_iter().flat_map(HashMap::keys).collect();
        tables.sort();
        tables.into_iter().map(|t| on(action, Some(t))).collect()
    }
    fn table_or_index(table: Option<&str>, index: Option<&str>) -> Option<String> {
        table.map(|t| match index {
            Some(i) => format!("{t}/index/{i}"),
            None => t.to_owned(),
        })
    }
    macro_rules! one {
        ($ty:ty, $action:literal, |$i:ident| $resource:expr) => {
            if let Some($i) = input.downcast_ref::<$ty>() {
                return Some(vec![on($action, $resource)]);
            }
        };
    }
    one!(ddb::get_item::GetItemInput, "dynamodb:GetItem", |i| i
        .table_name());
    one!(ddb::put_item::PutItemInput, "dynamodb:PutItem", |i| i
        .table_name());
    one!(
        ddb::update_item::UpdateItemInput,
        "dynamodb:UpdateItem",
        |i| i.table_name()
    );
    one!(
        ddb::delete_item::DeleteItemInput,
        "dynamodb:DeleteItem",
        |i| i.table_name()
    );
    one!(
        ddb::describe_table::DescribeTableInput,
        "dynamodb:DescribeTable",
        |i| i.table_name()
    );
    one!(ddb::query::QueryInput, "dynamodb:Query", |i| {
        table_or_index(i.table_name(), i.index_name())
    });
    one!(ddb::scan::ScanInput, "dynamodb:Scan", |i| {
        table_or_index(i.table_name(), i.index_name())
    });
    if let Some(i) = input.downcast_ref::<ddb::batch_get_item::BatchGetItemInput>() {
        return Some(per_table("dynamodb:BatchGetItem", i.request_items()));
    }
    if let Some(i) = input.downcast_ref::<ddb::batch_write_item::BatchWriteItemInput>() {
        return Some(per_table("dynamodb:BatchWriteItem", i.request_items()));
    }
    if let Some(i) = input.downcast_ref::<ddb::transact_write_items::TransactWriteItemsInput>() {
        return Some(
            i.transact_items()
                .iter()
                .flat_map(|item| {
                    [
                        item.put()
                            .map(|p| on("dynamodb:PutItem", Some(p.table_name()))),
                        item.update()
                            .map(|u| on("dynamodb:UpdateItem", Some(u.table_name()))),
                        item.delete()
                            .map(|d| on("dynamodb:DeleteItem", Some(d.table_name()))),
                        item.condition_check()
                            .map(|c| on("dynamodb:ConditionCheckItem", Some(c.table_name()))),
                    ]
                })
                .flatten()
                .collect(),
        );
    }
    if let Some(i) = input.downcast_ref::<ddb::transact_get_items::TransactGetItemsInput>() {
        return Some(
            i.transact_items()
                .iter()
                .filter_map(|item| item.get())
                .map(|g| on("dynamodb:GetItem", Some(g.table_name())))
                .collect(),
        );
    }
    one!(
        sqs::send_message::SendMessageInput,
        "sqs:SendMessage",
        |i| i.queue_url()
    );
    one!(
        sqs::send_message_batch::SendMessageBatchInput,
        "sqs:SendMessage",
        |i| i.queue_url()
    );
    one!(
        sqs::change_message_visibility::ChangeMessageVisibilityInput,
        "sqs:ChangeMessageVisibility",
        |i| i.queue_url()
    );
    one!(
        sqs::change_message_visibility_batch::ChangeMessageVisibilityBatchInput,
        "sqs:ChangeMessageVisibility",
        |i| i.queue_url()
    );
    one!(
        sqs::receive_message::ReceiveMessageInput,
        "sqs:ReceiveMessage",
        |i| i.queue_url()
    );
    one!(
        sqs::delete_message::DeleteMessageInput,
        "sqs:DeleteMessage",
        |i| i.queue_url()
    );
    one!(
        sqs::delete_message_batch::DeleteMessageBatchInput,
        "sqs:DeleteMessage",
        |i| i.queue_url()
    );
    one!(
        sqs::get_queue_attributes::GetQueueAttributesInput,
        "sqs:GetQueueAttributes",
        |i| i.queue_url()
    );
    None
}

fn crash_error(at: Crash) -> BoxError {
    format!("failpoint: handler crashed at {at:?}").into()
}

impl Intercept for Probe {
    fn name(&self) -> &'static str {
        "twochan-failpoints"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let mut state = self.lock();
        if state.crashed {
            return Err("failpoint: the handler already crashed".into());
        }
        let index = state.calls.len();
        // Named once the operation's own configuration is in the bag (after execution).
        state
            .calls
            .push(operation(cfg).unwrap_or_else(|| "unknown".into()));
        // The input is only here, before serialization takes it.
        state.actions.push(required_actions(context.input()));
        cfg.interceptor_state().store_put(CallIndex(index));
        if state.crash == Some(Crash::Before(index)) {
            state.crashed = true;
            return Err(crash_error(Crash::Before(index)));
        }
        if state.failing.contains(&index) {
            return Err(format!("failpoint: call {index} failed").into());
        }
        let hook = match &state.hook {
            Some((at, hook)) if *at == index => Some(hook.clone()),
            _ => None,
        };
        drop(state);
        if let Some(hook) = hook {
            hook();
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let mut state = self.lock();
        // Handlers make their calls one after another, so this execution is the last one started.
        let index = state.calls.len().saturating_sub(1);
        if let (Some(name), Some(call)) = (operation(cfg), state.calls.get_mut(index)) {
            *call = name;
        }
        // An operation whose actions are not known is listed by its name, on no known resource.
        let own = cfg.load::<CallIndex>().map(|c| c.0);
        if let (Some(own), Some(m)) = (own, cfg.load::<Metadata>()) {
            let action = format!("{}:{}", m.service().to_lowercase(), m.name());
            if let Some(slot @ None) = state.actions.get_mut(own) {
                *slot = Some(vec![(action, "?".to_owned())]);
            }
        }
        if !state.crashed && state.crash == Some(Crash::After(index)) {
            state.crashed = true;
            return Err(crash_error(Crash::After(index)));
        }
        Ok(())
    }
}
