//! A job graph is a recipe: `instantiate` wires fresh channels and tasks for one attempt, so
//! a restart never reuses anything from the failed attempt. `topology` follows the same recipe
//! without building a task or a channel, for whoever only places and controls the tasks.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::remote::{ChannelId, Incoming, IncomingChannel, Outgoing, OutgoingChannel};
use super::{CHANNEL_CAPACITY, Message, Task, TaskId};
use crate::error::Result;
use crate::functions::RecoverContext;
use crate::types::Data;

/// What a task is, without the task: enough to place, control and report on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: TaskId,
    /// The operator uid of the task's vertex.
    pub name: String,
    pub is_source: bool,
}

pub struct TaskSpec {
    pub id: TaskId,
    /// The operator uid of the task's vertex.
    pub name: String,
    pub is_source: bool,
    pub task: Box<dyn Task>,
}

pub struct GraphBuilder {
    pub parallelism: u32,
    pub max_parallelism: u32,
    vertices: Vec<String>,
    tasks: Vec<TaskSpec>,
    /// Which subtask indices run in this process (slot sharing: subtask `i` of every vertex
    /// shares slot `i`); `None` in local mode, where all do.
    local_subtasks: Option<Vec<bool>>,
    exchanges: u32,
    outgoing: Vec<Box<dyn OutgoingChannel>>,
    incoming: Vec<Box<dyn IncomingChannel>>,
    /// Set by `JobGraph::topology`: record which tasks there are in `topology`, and build no
    /// task and no channel.
    topology_only: bool,
    topology: Vec<TaskInfo>,
}

/// One attempt's tasks for this process, and the channel ends that cross to other processes.
pub struct GraphInstance {
    pub tasks: Vec<TaskSpec>,
    pub outgoing: Vec<Box<dyn OutgoingChannel>>,
    pub incoming: Vec<Box<dyn IncomingChannel>>,
}

/// Producer-side senders (`[producer][consumer]`) and consumer-side receivers
/// (`[consumer][producer]`) of one all-to-all exchange.
pub type ExchangeEnds<R> = (Vec<Vec<Sender<Message<R>>>>, Vec<Vec<Receiver<Message<R>>>>);

impl GraphBuilder {
    pub fn new(parallelism: u32, max_parallelism: u32) -> Self {
        GraphBuilder {
            parallelism,
            max_parallelism,
            vertices: Vec::new(),
            tasks: Vec::new(),
            local_subtasks: None,
            exchanges: 0,
            outgoing: Vec::new(),
            incoming: Vec::new(),
            topology_only: false,
            topology: Vec::new(),
        }
    }

    fn is_local(&self, subtask: usize) -> bool {
        self.local_subtasks
            .as_ref()
            .is_none_or(|local| local.get(subtask).copied().unwrap_or(false))
    }

    /// Channels from every producer subtask to every consumer subtask. Between two local
    /// subtasks a channel is a bounded queue; when exactly one end is local, that end is a
    /// queue too and the other end goes to a network pump (see `remote`). When only the
    /// topology is wanted, every producer and consumer gets no channel at all.
    pub fn exchange<R: Data>(&mut self) -> ExchangeEnds<R> {
        let parallelism = self.parallelism as usize;
        let exchange = self.exchanges;
        self.exchanges += 1;
        if self.topology_only {
            return (
                (0..parallelism).map(|_| Vec::new()).collect(),
                (0..parallelism).map(|_| Vec::new()).collect(),
            );
        }
        let mut senders: Vec<Vec<_>> = (0..parallelism).map(|_| Vec::new()).collect();
        let mut receivers: Vec<Vec<_>> = (0..parallelism).map(|_| Vec::new()).collect();
        for (producer, outputs) in senders.iter_mut().enumerate() {
            for (consumer, inputs) in receivers.iter_mut().enumerate() {
                let (tx, rx) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
                let id = ChannelId {
                    exchange,
                    producer: producer as u32,
                    consumer: consumer as u32,
                };
                // A task that does not run here still gets (unused) channel ends.
                let (tx, rx) = match (self.is_local(producer), self.is_local(consumer)) {
                    (true, false) => {
                        self.outgoing.push(Box::new(Outgoing { id, queue: rx }));
                        (tx, crossbeam_channel::never())
                    }
                    (false, true) => {
                        self.incoming.push(Box::new(Incoming { id, queue: tx }));
                        (crossbeam_channel::bounded(0).0, rx)
                    }
                    _ => (tx, rx),
                };
                outputs.push(tx);
                inputs.push(rx);
            }
        }
        (senders, receivers)
    }

    pub fn add_vertex(&mut self, name: &str) -> u32 {
        self.vertices.push(name.to_string());
        (self.vertices.len() - 1) as u32
    }

    /// Adds subtask `subtask` of `vertex`; `task` builds it, unless only the topology is wanted.
    pub fn add_task(
        &mut self,
        vertex: u32,
        subtask: u32,
        is_source: bool,
        task: impl FnOnce() -> Box<dyn Task>,
    ) {
        let id = TaskId { vertex, subtask };
        let name = self.vertices[vertex as usize].clone();
        if self.topology_only {
            self.topology.push(TaskInfo {
                id,
                name,
                is_source,
            });
            return;
        }
        self.tasks.push(TaskSpec {
            id,
            name,
            is_source,
            task: task(),
        });
    }

    pub fn into_tasks(self) -> Vec<TaskSpec> {
        self.tasks
    }
}

/// Name of a sink's pending commits in operator state.
pub const SINK_PENDING_STATE: &str = "pending";

/// Recovery hook of a sink, type-erased so the graph can hold sinks of any record type.
pub(crate) trait SinkRecovery: Send + Sync {
    fn recover(&self, pending: Vec<serde_json::Value>, ctx: &RecoverContext) -> Result<()>;
}

/// Wires one attempt's tasks and channels into a builder.
type BuildGraph = Arc<dyn Fn(&mut GraphBuilder) -> Result<()> + Send + Sync>;

pub struct JobGraph {
    pub(crate) build: BuildGraph,
    /// Sinks by operator uid.
    pub(crate) sinks: Vec<(String, Arc<dyn SinkRecovery>)>,
}

impl JobGraph {
    /// One job of two pipelines that share operators, e.g. a window's results and its late
    /// records, each ending in its own sink.
    pub fn and(self, other: JobGraph) -> JobGraph {
        let (first, second) = (self.build, other.build);
        let mut sinks = self.sinks;
        sinks.extend(other.sinks);
        JobGraph {
            build: Arc::new(move |graph| {
                first(graph)?;
                second(graph)
            }),
            sinks,
        }
    }

    /// Every task of one attempt, wired in this process (local mode).
    pub fn instantiate(&self, parallelism: u32, max_parallelism: u32) -> Result<Vec<TaskSpec>> {
        let mut builder = GraphBuilder::new(parallelism, max_parallelism);
        (self.build)(&mut builder)?;
        Ok(builder.into_tasks())
    }

    /// Every task of one attempt as `instantiate` builds them, in the same order, without
    /// building any task or channel (the JobManager only places and controls them).
    pub fn topology(&self, parallelism: u32, max_parallelism: u32) -> Result<Vec<TaskInfo>> {
        let mut builder = GraphBuilder::new(parallelism, max_parallelism);
        builder.topology_only = true;
        (self.build)(&mut builder)?;
        Ok(builder.topology)
    }

    /// The tasks of the subtask indices in `local` (one TaskManager's share of an attempt),
    /// with the channel ends that connect them to the other TaskManagers.
    pub fn instantiate_part(
        &self,
        parallelism: u32,
        max_parallelism: u32,
        local: &[u32],
    ) -> Result<GraphInstance> {
        let mut builder = GraphBuilder::new(parallelism, max_parallelism);
        let mut is_local = vec![false; parallelism as usize];
        for &subtask in local {
            if let Some(slot) = is_local.get_mut(subtask as usize) {
                *slot = true;
            }
        }
        builder.local_subtasks = Some(is_local);
        (self.build)(&mut builder)?;
        let GraphBuilder {
            tasks,
            outgoing,
            incoming,
            ..
        } = builder;
        Ok(GraphInstance {
            tasks: tasks
                .into_iter()
                .filter(|t| local.contains(&t.id.subtask))
                .collect(),
            outgoing,
            incoming,
        })
    }
}
