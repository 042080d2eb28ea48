//! Typed stream builders. Each `Stream<T>` holds a function that, given one downstream
//! collector per subtask, builds the upstream part of the graph: so operators compose
//! without boxing records, and a graph can be instantiated afresh for every attempt.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;

use super::{Data, Key, KeyedProcessFunction, SinkContext, SinkFactory, SinkWriter, SourceFactory};
use crate::error::{Error, Result};
use crate::runtime::chain::{Collector, Downstream, FilterOp, FlatMapOp, MapOp};
pub use crate::runtime::graph::SINK_PENDING_STATE;
use crate::runtime::graph::{GraphBuilder, JobGraph, SinkRecovery};
use crate::runtime::shuffle::{KeyedRecord, ShuffleWriter};
use crate::runtime::task::{KeyedTask, Plain, SourceTask};
use crate::runtime::{Barrier, Message, TaskEnv, TaskSnapshot};
use crate::spec::JobDocument;
use crate::state::Redistribution;

pub(crate) type Build<T> =
    Arc<dyn Fn(&mut GraphBuilder, Vec<Box<dyn Collector<T>>>) -> Result<()> + Send + Sync>;

/// Entry point for defining a job.
#[derive(Clone)]
pub struct StreamEnv {
    doc: Arc<JobDocument>,
    uids: Arc<Mutex<Vec<String>>>,
    /// First definition error (bad or duplicate uid), reported by `sink`.
    error: Arc<Mutex<Option<Error>>>,
}

impl StreamEnv {
    pub fn new(doc: Arc<JobDocument>) -> Self {
        StreamEnv {
            doc,
            uids: Default::default(),
            error: Default::default(),
        }
    }

    pub fn doc(&self) -> &JobDocument {
        &self.doc
    }

    /// Operator uids name state in checkpoints, so they must be unique and stable.
    pub(crate) fn register_uid(&self, uid: &str) {
        let valid = !uid.is_empty()
            && uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let mut uids = self.uids.lock().unwrap_or_else(|e| e.into_inner());
        let problem = if !valid {
            Some(format!(
                "operator uid {uid:?} must be non-empty [A-Za-z0-9_-]"
            ))
        } else if uids.iter().any(|u| u == uid) {
            Some(format!("operator uid {uid:?} is used twice"))
        } else {
            None
        };
        uids.push(uid.to_string());
        if let Some(message) = problem {
            let mut error = self.error.lock().unwrap_or_else(|e| e.into_inner());
            error.get_or_insert(Error::operator(uid, message));
        }
    }

    pub fn source<S: SourceFactory>(&self, uid: &str, source: S) -> Stream<S::Item> {
        self.register_uid(uid);
        let factory: Arc<dyn SourceFactory<Item = S::Item>> = Arc::new(source);
        let uid = uid.to_string();
        Stream {
            env: self.clone(),
            build: Arc::new(move |graph, tails| {
                let vertex = graph.add_vertex(&uid);
                for (subtask, chain) in tails.into_iter().enumerate() {
                    graph.add_task(vertex, subtask as u32, true, || {
                        Box::new(SourceTask {
                            uid: uid.clone(),
                            factory: factory.clone(),
                            chain,
                        })
                    });
                }
                Ok(())
            }),
        }
    }
}

pub struct Stream<T> {
    pub(crate) env: StreamEnv,
    pub(crate) build: Build<T>,
}

impl<T: Send + 'static> Stream<T> {
    /// Adds a link in front of every downstream collector.
    pub(crate) fn chain<U: Send + 'static>(
        self,
        link: impl Fn(Box<dyn Collector<U>>) -> Box<dyn Collector<T>> + Send + Sync + 'static,
    ) -> Stream<U> {
        let upstream = self.build;
        Stream {
            env: self.env,
            build: Arc::new(move |graph, tails: Vec<Box<dyn Collector<U>>>| {
                upstream(graph, tails.into_iter().map(&link).collect())
            }),
        }
    }

    pub fn map<U: Send + 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<U> {
        let f = Arc::new(f);
        self.chain(move |next| {
            Box::new(MapOp {
                f: f.clone(),
                next,
                _t: PhantomData,
            })
        })
    }

    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T> {
        let f = Arc::new(f);
        self.chain(move |next| Box::new(FilterOp { f: f.clone(), next }))
    }

    pub fn flat_map<U, I>(self, f: impl Fn(T) -> I + Send + Sync + 'static) -> Stream<U>
    where
        U: Send + 'static,
        I: IntoIterator<Item = U> + 'static,
    {
        let f = Arc::new(f);
        self.chain(move |next| {
            Box::new(FlatMapOp {
                f: f.clone(),
                next,
                _t: PhantomData,
            })
        })
    }

    /// Partitions by key: records with equal keys meet in one subtask, with their state.
    pub fn key_by<K: Key>(
        self,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> KeyedStream<K, T> {
        KeyedStream {
            stream: self,
            key: Arc::new(key),
        }
    }

    /// Ends the pipeline in a sink and returns the runnable graph.
    pub fn sink<S: SinkFactory<T>>(self, uid: &str, sink: S) -> Result<JobGraph> {
        self.env.register_uid(uid);
        if let Some(error) = self
            .env
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(error);
        }
        let factory: Arc<dyn SinkFactory<T>> = Arc::new(sink);
        let recovery: Arc<dyn SinkRecovery> = Arc::new(Recovery(factory.clone()));
        let owned_uid = uid.to_string();
        let upstream = self.build;
        Ok(JobGraph {
            build: Arc::new(move |graph| {
                let tails = (0..graph.parallelism)
                    .map(|_| {
                        Box::new(SinkOp {
                            uid: owned_uid.clone(),
                            factory: factory.clone(),
                            writer: None,
                            written: 0,
                        }) as Box<dyn Collector<T>>
                    })
                    .collect();
                upstream(graph, tails)
            }),
            sinks: vec![(uid.to_string(), recovery)],
        })
    }
}

pub struct KeyedStream<K, T> {
    pub(crate) stream: Stream<T>,
    pub(crate) key: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// Runs a keyed function; `make` creates one instance per subtask and attempt.
    pub fn process<O, P>(self, uid: &str, make: impl Fn() -> P + Send + Sync + 'static) -> Stream<O>
    where
        O: Send + 'static,
        P: KeyedProcessFunction<K, T, O>,
    {
        let env = self.stream.env.clone();
        env.register_uid(uid);
        let upstream = self.stream.build;
        let key = self.key;
        let uid = uid.to_string();
        Stream {
            env,
            build: Arc::new(move |graph, tails: Vec<Box<dyn Collector<O>>>| {
                let receivers = keyed_shuffle(graph, &upstream, &key, &uid)?;
                let vertex = graph.add_vertex(&uid);
                for (subtask, (inputs, chain)) in receivers.into_iter().zip(tails).enumerate() {
                    graph.add_task(vertex, subtask as u32, false, || {
                        Box::new(KeyedTask::<K, T, Infallible, O> {
                            uid: uid.clone(),
                            inputs,
                            broadcast_inputs: Vec::new(),
                            function: Box::new(Plain(make())),
                            chain,
                        })
                    });
                }
                Ok(())
            }),
        }
    }
}

/// Each consumer subtask's receivers of a keyed shuffle into operator `uid`, one per producer.
pub(crate) type KeyedInputs<K, T> = Vec<Vec<Receiver<Message<KeyedRecord<K, T>>>>>;

/// Wires `upstream` into a keyed shuffle towards operator `uid`'s subtasks.
pub(crate) fn keyed_shuffle<K: Key, T: Data>(
    graph: &mut GraphBuilder,
    upstream: &Build<T>,
    key: &Arc<dyn Fn(&T) -> K + Send + Sync>,
    uid: &str,
) -> Result<KeyedInputs<K, T>> {
    let (senders, receivers) = graph.exchange::<KeyedRecord<K, T>>();
    let writers = senders
        .into_iter()
        .map(|outputs| {
            Box::new(ShuffleWriter::new(
                key.clone(),
                outputs,
                graph.max_parallelism,
                uid,
            )) as Box<dyn Collector<T>>
        })
        .collect();
    upstream(graph, writers)?;
    Ok(receivers)
}

struct Recovery<T>(Arc<dyn SinkFactory<T>>);

impl<T: 'static> SinkRecovery for Recovery<T> {
    fn recover(&self, pending: Vec<serde_json::Value>, ctx: &super::RecoverContext) -> Result<()> {
        self.0.recover(pending, ctx)
    }
}

struct SinkOp<T> {
    uid: String,
    factory: Arc<dyn SinkFactory<T>>,
    writer: Option<Box<dyn SinkWriter<T>>>,
    written: u64,
}

impl<T> SinkOp<T> {
    fn writer(&mut self) -> Result<&mut Box<dyn SinkWriter<T>>> {
        self.writer
            .as_mut()
            .ok_or_else(|| Error::operator(&self.uid, "sink used before open"))
    }

    fn report(&mut self) {
        let metrics = crate::metrics::global();
        metrics
            .records_in
            .get_or_create(&metrics.operator(&self.uid))
            .inc_by(std::mem::take(&mut self.written));
    }
}

impl<T: Send + 'static> Downstream<T> for SinkOp<T> {
    fn collect(&mut self, item: T) -> Result<()> {
        self.written += 1;
        self.writer()?.write(item)
    }
}

impl<T: Send + 'static> Collector<T> for SinkOp<T> {
    fn open(&mut self, env: &TaskEnv) -> Result<()> {
        let ctx = SinkContext {
            subtask: env.id.subtask,
            parallelism: env.parallelism,
            rt: env.rt.clone(),
            doc: env.doc.clone(),
            local_dir: env.local_dir.join(&self.uid),
            attempt_id: env.attempt_id.clone(),
            cached_files: env.cached_files.clone(),
        };
        self.writer = Some(self.factory.create_writer(&ctx)?);
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &Barrier, snapshot: &mut TaskSnapshot) -> Result<()> {
        self.report();
        let pending = self.writer()?.pre_commit(barrier.checkpoint_id)?;
        snapshot.add_operator_state(
            &self.uid,
            SINK_PENDING_STATE,
            Redistribution::EvenSplit,
            pending,
        );
        Ok(())
    }

    fn on_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        // A terminating process publishes nothing: whoever restores this checkpoint next
        // commits its pending output (recovery is idempotent).
        let Some(_effect) = crate::runtime::shutdown::effect() else {
            tracing::debug!(sink = %self.uid, checkpoint_id, "terminating: not committing");
            return Ok(());
        };
        crate::fault_points::hit(crate::fault_points::FaultPoint::SinkNotifiedBeforeCommit);
        self.writer()?.commit(checkpoint_id)
    }

    fn flush(&mut self) -> Result<()> {
        self.report();
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.report();
        self.writer()?.finish()
    }
}
