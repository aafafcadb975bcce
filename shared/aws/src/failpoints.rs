//! Test instrumentation of the SDK clients, compiled only with the `failpoints` feature (the
//! integration tests enable it; the functions' builds never do). A [`Probe`] is an SDK
//! interceptor: it records every AWS call a handler makes, and can crash the handler at a chosen
//! call, either before the request is sent or after its answer came back (the write is then done
//! but the handler never learns it). After a crash every further call fails too: a dead process
//! makes no more calls, so no clean-up code can run that a real crash would skip.

use std::sync::{Arc, Mutex, MutexGuard};

use aws_smithy_runtime_api::{
    box_error::BoxError,
    client::{
        interceptors::{
            Intercept,
            context::{BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef},
        },
        orchestrator::Metadata,
        runtime_components::RuntimeComponents,
    },
};
use aws_smithy_types::config_bag::ConfigBag;

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

fn crash_error(at: Crash) -> BoxError {
    format!("failpoint: handler crashed at {at:?}").into()
}

impl Intercept for Probe {
    fn name(&self) -> &'static str {
        "twochan-failpoints"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
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
        if !state.crashed && state.crash == Some(Crash::After(index)) {
            state.crashed = true;
            return Err(crash_error(Crash::After(index)));
        }
        Ok(())
    }
}
