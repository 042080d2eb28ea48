//! Watermarks: the event-time clock that flows with the records.
//!
//! A watermark `At(t)` on a channel promises that no record with timestamp `<= t` follows on
//! that channel (records that do are late). A task with several inputs is at the minimum
//! over its inputs ([`WatermarkTracker`]); inputs that declared themselves `Idle` or ended are
//! left out, so one quiet source subtask does not hold event time back for everyone. The
//! watermark a task forwards never decreases.

pub use crate::types::{Timestamp, Watermark};

#[derive(Debug, Clone, Copy)]
struct InputClock {
    at: Timestamp,
    idle: bool,
    ended: bool,
}

/// The watermark of a task with several input channels: the minimum over the live ones.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    inputs: Vec<InputClock>,
    current: Timestamp,
    /// Whether the task last told downstream it is idle.
    idle: bool,
}

impl WatermarkTracker {
    pub fn new(inputs: usize) -> Self {
        WatermarkTracker {
            inputs: vec![
                InputClock {
                    at: Timestamp::MIN,
                    idle: false,
                    ended: false,
                };
                inputs
            ],
            current: Timestamp::MIN,
            idle: false,
        }
    }

    /// The task's event time: `Timestamp::MIN` until every live input sent a watermark.
    pub fn current(&self) -> Timestamp {
        self.current
    }

    /// Records a watermark from `input`; returns what to forward downstream, if anything
    /// changed (an advance, or a change between idle and active).
    pub fn on_watermark(&mut self, input: usize, watermark: Watermark) -> Option<Watermark> {
        let clock = &mut self.inputs[input];
        match watermark {
            Watermark::At(t) => {
                clock.at = clock.at.max(t);
                clock.idle = false;
            }
            Watermark::Idle => clock.idle = true,
        }
        self.recompute()
    }

    /// An ended input no longer holds the minimum back. Nothing is forwarded for it: a
    /// normal end of input sends `Watermark::MAX` first, and a stop-with-savepoint must not
    /// advance event time after its barrier (that output would not be in the savepoint).
    pub fn on_end_of_stream(&mut self, input: usize) {
        self.inputs[input].ended = true;
    }

    fn recompute(&mut self) -> Option<Watermark> {
        let live = self.inputs.iter().filter(|c| !c.ended);
        let active_min = live.clone().filter(|c| !c.idle).map(|c| c.at).min();
        match active_min {
            None if live.count() > 0 => {
                if self.idle {
                    return None;
                }
                self.idle = true;
                Some(Watermark::Idle)
            }
            None => None,
            Some(min) => {
                let was_idle = std::mem::replace(&mut self.idle, false);
                if min > self.current {
                    self.current = min;
                    Some(Watermark::At(min))
                } else if was_idle {
                    Some(Watermark::At(self.current))
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_minimum_over_inputs() {
        let mut t = WatermarkTracker::new(3);
        assert_eq!(t.on_watermark(0, Watermark::At(10)), None);
        assert_eq!(t.on_watermark(1, Watermark::At(5)), None);
        assert_eq!(
            t.on_watermark(2, Watermark::At(7)),
            Some(Watermark::At(5)),
            "every input has spoken: the minimum"
        );
        assert_eq!(
            t.on_watermark(0, Watermark::At(20)),
            None,
            "input 1 holds it"
        );
        assert_eq!(t.on_watermark(1, Watermark::At(30)), Some(Watermark::At(7)));
        assert_eq!(t.current(), 7);
    }

    #[test]
    fn watermark_never_goes_back() {
        let mut t = WatermarkTracker::new(1);
        assert_eq!(
            t.on_watermark(0, Watermark::At(10)),
            Some(Watermark::At(10))
        );
        assert_eq!(t.on_watermark(0, Watermark::At(3)), None);
        assert_eq!(t.current(), 10);
    }

    #[test]
    fn idle_inputs_are_left_out_until_they_speak_again() {
        let mut t = WatermarkTracker::new(2);
        t.on_watermark(0, Watermark::At(100));
        assert_eq!(
            t.on_watermark(1, Watermark::Idle),
            Some(Watermark::At(100)),
            "the idle input no longer holds event time at MIN"
        );
        assert_eq!(
            t.on_watermark(0, Watermark::At(150)),
            Some(Watermark::At(150))
        );
        // Back with an older watermark: it holds the minimum again, but nothing goes back.
        assert_eq!(t.on_watermark(1, Watermark::At(120)), None);
        assert_eq!(t.on_watermark(0, Watermark::At(200)), None);
        assert_eq!(
            t.on_watermark(1, Watermark::At(180)),
            Some(Watermark::At(180))
        );
    }

    #[test]
    fn all_inputs_idle_makes_the_task_idle_once() {
        let mut t = WatermarkTracker::new(2);
        t.on_watermark(0, Watermark::At(5));
        t.on_watermark(1, Watermark::At(6));
        assert_eq!(t.on_watermark(0, Watermark::Idle), Some(Watermark::At(6)));
        assert_eq!(t.on_watermark(1, Watermark::Idle), Some(Watermark::Idle));
        assert_eq!(t.on_watermark(1, Watermark::Idle), None);
        assert_eq!(
            t.on_watermark(0, Watermark::At(5)),
            Some(Watermark::At(6)),
            "active again, at the watermark it already had"
        );
    }

    #[test]
    fn ended_inputs_do_not_hold_the_minimum() {
        let mut t = WatermarkTracker::new(2);
        t.on_watermark(0, Watermark::At(5));
        t.on_end_of_stream(1);
        assert_eq!(t.on_watermark(0, Watermark::At(8)), Some(Watermark::At(8)));
    }

    #[test]
    fn max_watermark_from_every_input_reaches_max() {
        let mut t = WatermarkTracker::new(2);
        t.on_watermark(0, Watermark::MAX);
        assert_eq!(t.on_watermark(1, Watermark::MAX), Some(Watermark::MAX));
    }
}
