//! Workflows: tasks that run one after another (a chain), carried with
//! the task itself, routing-slip style.
//!
//! A chain is an ordered list of steps, each a task type and a body. The
//! producer publishes the first step with the rest of the list in the
//! `x-warren-chain` header (the [`Slip`]). When a step succeeds, the
//! worker's runtime publishes the next step, with the slip shortened by
//! one, and waits for the broker's confirm before it acks the step it
//! ran. Retry and parking-lot copies carry the header unchanged, so a
//! retried step does not restart the chain and a replayed parked step
//! resumes it where it stopped. Nothing is kept anywhere but in the
//! messages.
//!
//! ```
//! use serde_json::json;
//! use warren::workflow::{Chain, Step};
//!
//! let chain = warren::chain![
//!     Step::new("pipeline.validate", json!({ "record": { "id": "r-1", "value": 21 } })),
//!     Step::new("pipeline.process", json!({ "factor": 2 })).result_to("input"),
//!     Step::new("pipeline.save", json!({})).result_to("processed"),
//! ]
//! .id("order-7");
//! assert_eq!(chain.len(), 3);
//! assert_eq!(warren::workflow::step_id("order-7", 2), "order-7.2");
//! ```

mod chain;
mod chord;
mod nested;
mod record;

pub use chain::{Chain, ChainError, MAX_SLIP_BYTES, MAX_STEPS, NextStep, Slip, Step, step_id};
pub use chord::{
    CHORD_ABORT_CONTENT_TYPE, CHORD_ABORT_MESSAGE_TYPE, CHORD_CONTENT_TYPE, CHORD_MESSAGE_TYPE,
    Chord, ChordAbort, ChordRecord, Group, GroupError, MARK_CONTENT_TYPE, MARK_MESSAGE_TYPE,
    MAX_MEMBERS, OnFailure, group,
};
pub use nested::{ChainPlace, GroupLink, IntoLinks, Link, Next, NextGroup};
pub use record::{
    StepShape, WORKFLOW_CONTENT_TYPE, WORKFLOW_MESSAGE_TYPE, WorkflowKind, WorkflowRecord,
};

/// A chain of [`Step`]s, [`Group`]s and [`Chord`]s, in order:
/// `chain![a, b, c]` is `Chain::of` their [`Link`]s. A group is a link
/// whose members run in parallel; the step after it runs once they are
/// all final, with their outcomes (see [`Link`]). A chord is its group,
/// then its callback, then the steps of its [`Chord::and_then`].
///
/// ```
/// use serde_json::json;
/// use warren::workflow::{Step, group};
///
/// let chain = warren::chain![
///     Step::new("pipeline.validate", json!({ "record": { "id": "r-1", "value": 2 } })),
///     group(vec![
///         Step::new("pipeline.process", json!({ "factor": 3 })).result_to("input"),
///         Step::new("pipeline.process", json!({ "factor": 5 })).result_to("input"),
///     ]),
///     Step::new("pipeline.report", json!({})),
/// ]
/// .id("fan-1");
/// assert_eq!(chain.len(), 3);
/// ```
#[macro_export]
macro_rules! chain {
    ($($link:expr),* $(,)?) => {{
        let mut links: ::std::vec::Vec<$crate::workflow::Link> = ::std::vec::Vec::new();
        $( links.extend($crate::workflow::IntoLinks::into_links($link)); )*
        $crate::workflow::Chain::of(links)
    }};
}
