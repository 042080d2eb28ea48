//! The broadcast state pattern: a low-volume stream (rules, thresholds, allow-lists) sent
//! whole to every parallel subtask of a function, which keeps it in broadcast state and
//! applies it to its main input.
//!
//! ```ignore
//! let rules = env.source("rules", FileSource::<Rule>::json_lines(rules)).broadcast();
//! env.source("events", events)
//!     .key_by(|e: &Event| e.user.clone())
//!     .connect(rules)
//!     .process("matcher", || Matcher::default())
//! ```

use std::sync::Arc;

use super::stream::{KeyedInputs, KeyedStream, Stream, keyed_shuffle};
use super::time::EventTimeKeyedStream;
use crate::error::Result;
use crate::functions::{BroadcastProcessFunction, KeyedBroadcastProcessFunction};
use crate::runtime::broadcast::{KeyedWithBroadcast, NonKeyedWithBroadcast};
use crate::runtime::chain::Collector;
use crate::runtime::graph::GraphBuilder;
use crate::runtime::shuffle::{BroadcastWriter, ForwardWriter, KeyedRecord};
use crate::runtime::task::{KeyedOperator, KeyedTask};
use crate::types::{Data, Key};

/// A stream every subtask of the function it is connected to receives whole.
pub struct BroadcastStream<B> {
    stream: Stream<B>,
}

impl<T: Data + Clone> Stream<T> {
    /// Sends every record of this stream to every subtask of the function it is connected to
    /// (`connect`), which keeps what it needs in broadcast state.
    pub fn broadcast(self) -> BroadcastStream<T> {
        BroadcastStream { stream: self }
    }
}

impl<T: Data> Stream<T> {
    /// A non-keyed function over this stream and `broadcast` (its records are not
    /// repartitioned: subtask `i` reads what subtask `i` upstream produced).
    pub fn connect<B: Data + Clone>(
        self,
        broadcast: BroadcastStream<B>,
    ) -> BroadcastConnectedStream<T, B> {
        BroadcastConnectedStream {
            main: self,
            broadcast: broadcast.stream,
        }
    }
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// A keyed function over this stream and `broadcast`.
    pub fn connect<B: Data + Clone>(
        self,
        broadcast: BroadcastStream<B>,
    ) -> BroadcastConnectedKeyedStream<K, T, B> {
        BroadcastConnectedKeyedStream {
            main: self,
            broadcast: broadcast.stream,
        }
    }
}

impl<K: Key, T: Data> EventTimeKeyedStream<K, T> {
    /// A keyed function over this stream and `broadcast`, with event-time timers: the
    /// function's watermark is the least of both inputs' (Flink's rule for two inputs), so
    /// a broadcast stream without timestamps holds event time back until it ends.
    pub fn connect<B: Data + Clone>(
        self,
        broadcast: BroadcastStream<B>,
    ) -> BroadcastConnectedKeyedStream<K, T, B> {
        self.keyed.connect(broadcast)
    }
}

/// A non-keyed stream connected to a broadcast stream.
pub struct BroadcastConnectedStream<T, B> {
    main: Stream<T>,
    broadcast: Stream<B>,
}

impl<T: Data, B: Data + Clone> BroadcastConnectedStream<T, B> {
    /// Runs `make()`'s function (one per subtask and attempt) under operator uid `uid`.
    pub fn process<O, F>(self, uid: &str, make: impl Fn() -> F + Send + Sync + 'static) -> Stream<O>
    where
        O: Send + 'static,
        F: BroadcastProcessFunction<T, B, O>,
    {
        let env = self.main.env.clone();
        env.register_uid(uid);
        let upstream = self.main.build;
        let uid_owned = uid.to_string();
        let main_inputs = Arc::new(move |graph: &mut GraphBuilder| {
            let (senders, receivers) = graph.exchange::<KeyedRecord<(), T>>();
            let max_parallelism = graph.max_parallelism;
            let writers = senders
                .into_iter()
                .enumerate()
                .map(|(producer, outputs)| {
                    Box::new(ForwardWriter::new(
                        outputs,
                        producer as u32,
                        max_parallelism,
                        &uid_owned,
                    )) as Box<dyn Collector<T>>
                })
                .collect();
            upstream(graph, writers)?;
            Ok(receivers)
        });
        connected(
            env,
            uid,
            main_inputs,
            self.broadcast,
            Arc::new(move || {
                Box::new(NonKeyedWithBroadcast::new(make())) as Box<dyn KeyedOperator<(), T, B, O>>
            }),
        )
    }
}

/// A keyed stream connected to a broadcast stream.
pub struct BroadcastConnectedKeyedStream<K, T, B> {
    main: KeyedStream<K, T>,
    broadcast: Stream<B>,
}

impl<K: Key, T: Data, B: Data + Clone> BroadcastConnectedKeyedStream<K, T, B> {
    /// Runs `make()`'s function (one per subtask and attempt) under operator uid `uid`.
    pub fn process<O, F>(self, uid: &str, make: impl Fn() -> F + Send + Sync + 'static) -> Stream<O>
    where
        O: Send + 'static,
        F: KeyedBroadcastProcessFunction<K, T, B, O>,
    {
        let env = self.main.stream.env.clone();
        env.register_uid(uid);
        let upstream = self.main.stream.build;
        let key = self.main.key;
        let uid_owned = uid.to_string();
        let main_inputs = Arc::new(move |graph: &mut GraphBuilder| {
            keyed_shuffle(graph, &upstream, &key, &uid_owned)
        });
        connected(
            env,
            uid,
            main_inputs,
            self.broadcast,
            Arc::new(move || {
                Box::new(KeyedWithBroadcast::new(make())) as Box<dyn KeyedOperator<K, T, B, O>>
            }),
        )
    }
}

/// Wires the main side's graph and receivers for the consumer subtasks.
type MainInputs<K, T> = Arc<dyn Fn(&mut GraphBuilder) -> Result<KeyedInputs<K, T>> + Send + Sync>;

type MakeOperator<K, T, B, O> = Arc<dyn Fn() -> Box<dyn KeyedOperator<K, T, B, O>> + Send + Sync>;

/// The connected operator's vertex: keyed tasks reading the main side's receivers and, after
/// them, a broadcast exchange from every subtask of the broadcast side.
fn connected<K: Key, T: Send + 'static, B: Data + Clone, O: Send + 'static>(
    env: super::StreamEnv,
    uid: &str,
    main_inputs: MainInputs<K, T>,
    broadcast: Stream<B>,
    make: MakeOperator<K, T, B, O>,
) -> Stream<O> {
    let uid = uid.to_string();
    let broadcast_upstream = broadcast.build;
    Stream {
        env,
        build: Arc::new(move |graph, tails: Vec<Box<dyn Collector<O>>>| {
            let receivers = main_inputs(graph)?;
            let (senders, broadcast_receivers) = graph.exchange::<B>();
            let writers = senders
                .into_iter()
                .map(|outputs| {
                    Box::new(BroadcastWriter::new(outputs, &uid)) as Box<dyn Collector<B>>
                })
                .collect();
            broadcast_upstream(graph, writers)?;
            let vertex = graph.add_vertex(&uid);
            let inputs = receivers.into_iter().zip(broadcast_receivers);
            for (subtask, ((inputs, broadcast_inputs), chain)) in inputs.zip(tails).enumerate() {
                graph.add_task(vertex, subtask as u32, false, || {
                    Box::new(KeyedTask {
                        uid: uid.clone(),
                        inputs,
                        broadcast_inputs,
                        function: make(),
                        chain,
                    })
                });
            }
            Ok(())
        }),
    }
}
