//! Local mode: the whole job in one process (a mini-cluster). The driver is the same as the
//! JobManager's; the executor runs every task on a thread of this process, connected by
//! in-memory channels.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::driver::{AttemptPlan, Deployment, DriverOptions, Executor, TaskHandle, run_job};
use super::graph::{JobGraph, TaskSpec};
use super::job::{JobCommand, JobHandle};
use super::{TaskEnv, TaskEvent};
use crate::checkpoint::SharedRestore;
use crate::error::{Error, Result};
use crate::spec::{CheckpointMode, JobDocument};
use crate::storage::ObjectStore;

pub use super::driver::{JobEnd, JobOutcome};

#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Scratch space for RocksDB and in-progress files.
    pub work_dir: PathBuf,
    pub progress_interval: Duration,
}

impl LocalOptions {
    pub fn for_document(doc: &JobDocument) -> Self {
        LocalOptions {
            work_dir: default_work_dir(doc),
            progress_interval: Duration::from_secs(5),
        }
    }
}

/// The document's `state.localDir`, else `<tmp>/weir`.
pub fn default_work_dir(doc: &JobDocument) -> PathBuf {
    doc.state
        .local_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("weir"))
}

/// Runs `graph` in this process to completion (bounded input), until it is stopped or
/// cancelled through `job`, or until it fails for good.
pub fn run_local(
    doc: Arc<JobDocument>,
    graph: &JobGraph,
    rt: &tokio::runtime::Handle,
    options: &LocalOptions,
    job: &JobHandle,
    commands: &Receiver<JobCommand>,
) -> Result<JobOutcome> {
    let driver = DriverOptions {
        progress_interval: options.progress_interval,
        prefer_newer_checkpoint: false,
    };
    let mut executor = LocalExecutor {
        work_dir: options.work_dir.clone(),
    };
    run_job(doc, graph, rt, &driver, &mut executor, job, commands)
}

struct LocalExecutor {
    work_dir: PathBuf,
}

impl Executor for LocalExecutor {
    fn deploy(
        &mut self,
        plan: &AttemptPlan<'_>,
        events: Sender<TaskEvent>,
        _commands: &Receiver<JobCommand>,
    ) -> Result<Option<Deployment>> {
        let specs = plan
            .graph
            .instantiate(plan.doc.parallelism, plan.doc.max_parallelism)?;
        let local_dir = self.work_dir.join(plan.doc.job_id()).join(&plan.attempt_id);
        let resources = TaskResources {
            doc: plan.doc,
            rt: plan.rt,
            job_store: plan.job_store.clone(),
            restore: plan.restore.clone(),
            attempt_id: &plan.attempt_id,
        };
        let running = spawn_tasks(&resources, specs, &local_dir, &events)?;
        Ok(Some(running.into_deployment()))
    }
}

/// Tasks of one attempt running on threads of this process.
pub(crate) struct RunningTasks {
    pub handles: Vec<TaskHandle>,
    pub threads: Vec<std::thread::JoinHandle<()>>,
    pub cancelled: Arc<AtomicBool>,
    pub controls: Vec<Sender<super::ControlMessage>>,
    pub local_dir: PathBuf,
}

impl RunningTasks {
    /// Cancels every task, joins its thread and removes the attempt's scratch space.
    pub fn stop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        for control in &self.controls {
            let _ = control.send(super::ControlMessage::Cancel);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.local_dir);
    }

    fn into_deployment(mut self) -> Deployment {
        let tasks = std::mem::take(&mut self.handles);
        Deployment {
            tasks,
            stop: Box::new(move || self.stop()),
        }
    }
}

/// What tasks of one attempt share.
pub(crate) struct TaskResources<'a> {
    pub doc: &'a Arc<JobDocument>,
    pub rt: &'a tokio::runtime::Handle,
    pub job_store: Option<ObjectStore>,
    pub restore: SharedRestore,
    pub attempt_id: &'a str,
}

/// Downloads the attempt's cached files into `local_dir` (once for all of `specs`), then
/// starts `specs` on threads, each with its own control channel; failures and panics become
/// `TaskEvent::Failed`.
pub(crate) fn spawn_tasks(
    plan: &TaskResources<'_>,
    specs: Vec<TaskSpec>,
    local_dir: &std::path::Path,
    events: &Sender<TaskEvent>,
) -> Result<RunningTasks> {
    std::fs::create_dir_all(local_dir).map_err(|e| Error::io(local_dir.display(), e))?;
    let doc = plan.doc;
    let cached_files =
        super::cache::download(doc, &local_dir.join(super::cache::CACHE_DIR), plan.rt)
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(local_dir);
            })?;
    let checkpoint_mode = doc
        .checkpointing
        .as_ref()
        .map_or(CheckpointMode::ExactlyOnce, |c| c.mode);
    let cancelled = Arc::new(AtomicBool::new(false));
    let mut running = RunningTasks {
        handles: Vec::with_capacity(specs.len()),
        threads: Vec::with_capacity(specs.len()),
        cancelled: cancelled.clone(),
        controls: Vec::with_capacity(specs.len()),
        local_dir: local_dir.to_path_buf(),
    };
    for spec in specs {
        let (control_tx, control) = crossbeam_channel::unbounded();
        let env = TaskEnv {
            id: spec.id,
            name: spec.name.clone(),
            parallelism: doc.parallelism,
            max_parallelism: doc.max_parallelism,
            doc: doc.clone(),
            rt: plan.rt.clone(),
            checkpoint_store: plan.job_store.clone(),
            checkpoint_mode,
            restore: plan.restore.clone(),
            local_dir: local_dir.join(format!("{}-{}", spec.name, spec.id.subtask)),
            attempt_id: plan.attempt_id.to_string(),
            cached_files: cached_files.clone(),
            control,
            events: events.clone(),
            cancelled: cancelled.clone(),
        };
        let events_tx = events.clone();
        let task = spec.task;
        let (id, name) = (spec.id, spec.name.clone());
        let thread = std::thread::Builder::new()
            .name(format!("{}-{}", spec.name, spec.id.subtask))
            .spawn(move || {
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run(env)));
                let error = match outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(error)) => error,
                    Err(panic) => {
                        Error::operator(&name, format!("panicked: {}", panic_message(&panic)))
                    }
                };
                let _ = events_tx.send(TaskEvent::Failed { task: id, error });
            })
            .map_err(|e| Error::io("task thread", e))?;
        let sender = control_tx.clone();
        running.handles.push(TaskHandle {
            id: spec.id,
            name: spec.name.clone(),
            is_source: spec.is_source,
            control: Box::new(move |message| {
                let _ = sender.send(message);
            }),
        });
        running.controls.push(control_tx);
        running.threads.push(thread);
    }
    Ok(running)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
