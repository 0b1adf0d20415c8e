//! The shutdown ladder as pure logic: policy, back-off, the schedule of steps,
//! and the report, one concept per file.
//!
//! - `policy.rs`: [`ShutdownPolicy`], the ladder's knobs, and [`Backoff`],
//!   the spacing of its re-deliveries;
//! - `schedule.rs`: [`Schedule`], the policy as a timetable of [`Step`]s;
//! - `report.rs`: [`ShutdownReport`] and its [`StuckTask`]s;
//! - `driver.rs`: the ladder's loop over the core, runtime-free
//!   ([`driver::drive`]): it waits until the next step (or until the target
//!   has ended, whichever comes first) and performs it.
//!
//! The tokio layer (`Tracker::run_ladder` in `tracker/ladder.rs`) gives the
//! driver its clock (one `tokio::time::Sleep`), escalation's hook thread and
//! a scheduling round, and builds the report from what the driver returns;
//! the loom models (`loom_models/ladder.rs`) drive the same code with a step
//! timer.
//!
//! ```text
//!  cancel ──► deliver (one wake per task)
//!    │
//!    ├─ t = b, b+2b, b+2b+4b, …  (≤ max_redeliveries, < grace)
//!    │     re-deliver to tasks that parked again after seeing it; skip the rest
//!    │
//!    ├─ t = grace        escalate: hook once, on its own thread (panics
//!    │                   caught), and abort at once
//!    │
//!    └─ t = grace + abort_grace   whatever is alive is *stuck*: reported
//!
//!  at any point: every task ended ──► return at once, no timer left
//! ```

pub(crate) mod driver;
mod policy;
mod report;
mod schedule;

pub use policy::{Backoff, ShutdownPolicy};
pub use report::{ShutdownReport, StuckTask};
pub(crate) use schedule::{Schedule, Step};
