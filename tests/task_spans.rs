//! A task's span: a child of the span current at its spawn (as
//! `fut.in_current_span()`), enabled by a subscriber that shows warnings
//! only, with its name and key recorded as plain text.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cancel_scope::{ShutdownPolicy, TaskGroup, TaskMap};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span's name, its parent's name, its fields as `name=value` text.
type SpanSeen = (String, Option<String>, Vec<String>);
/// An event's fields as text, the names of the spans it is inside
/// (innermost first).
type EventSeen = (String, Vec<String>);

#[derive(Default, Clone)]
struct Seen {
    spans: Arc<Mutex<Vec<SpanSeen>>>,
    events: Arc<Mutex<Vec<EventSeen>>>,
}

struct Fields(Vec<String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push(format!("{}={value}", field.name()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push(format!("{}={value:?}", field.name()));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Seen {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let parent = span.parent().map(|p| p.name().to_owned());
        let mut fields = Fields(Vec::new());
        attrs.record(&mut fields);
        self.spans
            .lock()
            .unwrap()
            .push((span.name().to_owned(), parent, fields.0));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields(Vec::new());
        event.record(&mut fields);
        let scopes = ctx
            .event_scope(event)
            .map(|s| s.map(|span| span.name().to_owned()).collect())
            .unwrap_or_default();
        self.events
            .lock()
            .unwrap()
            .push((fields.0.join(" "), scopes));
    }
}

fn with_warn_subscriber(body: impl FnOnce()) -> Seen {
    let seen = Seen::default();
    let subscriber =
        tracing_subscriber::registry().with(seen.clone().with_filter(LevelFilter::WARN));
    tracing::subscriber::with_default(subscriber, body);
    seen
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn a_task_span_is_a_child_of_the_span_current_at_spawn_and_shows_at_warn() {
    let seen = with_warn_subscriber(|| {
        paused_runtime().block_on(async {
            let map = TaskMap::new();
            let request = tracing::warn_span!("request", id = 42);
            let _entered = request.enter();
            map.build_task("conn 1")
                .name("conn 1")
                .spawn(async {})
                .await
                .unwrap();
        });
    });
    let spans = seen.spans.lock().unwrap();
    let task = spans
        .iter()
        .find(|(name, ..)| name == "task")
        .expect("a task span at WARN");
    assert_eq!(task.1.as_deref(), Some("request"), "{spans:?}");
    assert!(task.2.contains(&"name=conn 1".to_owned()), "{:?}", task.2);
    assert!(
        task.2.contains(&"key=\"conn 1\"".to_owned()),
        "{:?}",
        task.2
    );
}

#[test]
fn the_ladders_warnings_name_the_task_plainly_inside_its_callers_span() {
    let seen = with_warn_subscriber(|| {
        paused_runtime().block_on(async {
            let group = TaskGroup::builder()
                .policy(ShutdownPolicy {
                    grace: Duration::from_secs(1),
                    abort_grace: Duration::from_secs(1),
                    ..Default::default()
                })
                .build();
            {
                let request = tracing::warn_span!("request", id = 42);
                let _entered = request.enter();
                group
                    .build_task()
                    .name("listener")
                    .spawn_with_scope(|_scope| async {
                        tracing::warn!("inside the task");
                        std::future::pending::<()>().await
                    });
            }
            tokio::task::yield_now().await;
            let report = group.shutdown().await;
            assert_eq!(report.escalations, 1);
        });
    });
    let events = seen.events.lock().unwrap();
    let inside = events
        .iter()
        .find(|(text, _)| text.contains("inside the task"))
        .expect("the task's own warning");
    assert_eq!(inside.1, ["task", "request"], "{events:?}");
    let escalation = events
        .iter()
        .find(|(text, _)| text.contains("escalating"))
        .expect("the escalation warning");
    assert!(escalation.0.contains("name=listener"), "{}", escalation.0);
    assert!(!escalation.0.contains("Some("), "{}", escalation.0);
}
