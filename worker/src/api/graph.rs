//! A job graph is a recipe: `instantiate` wires fresh channels and tasks for one attempt, so
//! a restart never reuses anything from the failed attempt.

use std::sync::Arc;

use crate::error::Result;
use crate::runtime::{Task, TaskId};

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
}

impl GraphBuilder {
    pub fn new(parallelism: u32, max_parallelism: u32) -> Self {
        GraphBuilder {
            parallelism,
            max_parallelism,
            vertices: Vec::new(),
            tasks: Vec::new(),
        }
    }

    pub fn add_vertex(&mut self, name: &str) -> u32 {
        self.vertices.push(name.to_string());
        (self.vertices.len() - 1) as u32
    }

    pub fn add_task(&mut self, vertex: u32, subtask: u32, is_source: bool, task: Box<dyn Task>) {
        let name = self.vertices[vertex as usize].clone();
        self.tasks.push(TaskSpec {
            id: TaskId { vertex, subtask },
            name,
            is_source,
            task,
        });
    }

    pub fn into_tasks(self) -> Vec<TaskSpec> {
        self.tasks
    }
}

/// Recovery hook of a sink, type-erased so the graph can hold sinks of any record type.
pub(crate) trait SinkRecovery: Send + Sync {
    fn recover(&self, pending: Vec<serde_json::Value>, ctx: &super::RecoverContext) -> Result<()>;
}

/// Wires one attempt's tasks and channels into a builder.
type BuildGraph = Arc<dyn Fn(&mut GraphBuilder) -> Result<()> + Send + Sync>;

pub struct JobGraph {
    pub(crate) build: BuildGraph,
    /// Sinks by operator uid.
    pub(crate) sinks: Vec<(String, Arc<dyn SinkRecovery>)>,
}

impl JobGraph {
    pub fn instantiate(&self, parallelism: u32, max_parallelism: u32) -> Result<Vec<TaskSpec>> {
        let mut builder = GraphBuilder::new(parallelism, max_parallelism);
        (self.build)(&mut builder)?;
        Ok(builder.into_tasks())
    }
}
