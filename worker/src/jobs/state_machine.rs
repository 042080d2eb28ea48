//! `state-machine`: Flink's StateMachineExample. Events per source address drive a state
//! machine kept in ValueState; an event with no transition from the current state emits an
//! alert; reaching the terminal state clears the state.
//!
//! ```text
//!           +--[a]--> W --[b]--> Y --[e]---+
//!           |                    ^         |
//!   Initial-+                    |         +--> Z --[g]--> Terminal
//!           |                    |         |
//!           +--[c]--> X --[b]----+         |
//!                     |                    |
//!                     +--------[d]---------+
//! ```

use serde::{Deserialize, Serialize};

use super::{BuiltJob, FileJobArgs};
use crate::api::{Emitter, KeyedProcessFunction, StreamEnv};
use crate::connectors::{FileSink, FileSource};
use crate::error::Result;
use crate::state::{KeyedContext, StateRegistry, ValueState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    A,
    B,
    C,
    D,
    E,
    F,
    G,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MachineState {
    Initial,
    W,
    X,
    Y,
    Z,
    Terminal,
}

impl MachineState {
    /// The next state, or `None` for an invalid transition.
    pub fn transition(self, event: EventType) -> Option<MachineState> {
        use EventType as E;
        use MachineState as S;
        match (self, event) {
            (S::Initial, E::A) => Some(S::W),
            (S::Initial, E::C) => Some(S::X),
            (S::W, E::B) => Some(S::Y),
            (S::X, E::B) => Some(S::Y),
            (S::X, E::D) => Some(S::Z),
            (S::Y, E::E) => Some(S::Z),
            (S::Z, E::G) => Some(S::Terminal),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub source_address: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub source_address: String,
    pub state: MachineState,
    pub event: EventType,
}

#[derive(Default)]
struct StateMachineMapper {
    state: Option<ValueState<MachineState>>,
}

impl KeyedProcessFunction<String, Event, Alert> for StateMachineMapper {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.state = Some(state.value_state("state")?);
        Ok(())
    }

    fn process(
        &mut self,
        address: &String,
        event: Event,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, Alert>,
    ) -> Result<()> {
        let Some(handle) = &self.state else {
            return Ok(());
        };
        let current = handle.get(ctx)?.unwrap_or(MachineState::Initial);
        match current.transition(event.event_type) {
            None => out.emit(Alert {
                source_address: address.clone(),
                state: current,
                event: event.event_type,
            }),
            Some(MachineState::Terminal) => handle.clear(ctx),
            Some(next) => handle.set(ctx, &next),
        }
    }
}

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: FileJobArgs = env.doc().args()?;
    let graph = env
        .source("events", FileSource::<Event>::json_lines(&args.input))
        .key_by(|event: &Event| event.source_address.clone())
        .process("state-machine", StateMachineMapper::default)
        .sink("alerts", FileSink::json_lines(&args.output))?;
    Ok(BuiltJob {
        graph,
        output: Some(args.output),
        monitor: None,
    })
}
