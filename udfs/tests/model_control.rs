//! Model changes while a stream runs (`risksense_udfs::control`): loaded and checked off
//! the stream's thread, applied by the stream between micro-batches, then by the API; a
//! model that does not fit changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use risksense_udfs::control::ControlError;
use risksense_udfs::{
    Model, ModelCard, ModelControl, ModelHandle, ModelRegistry, SessionOptions, Slot,
};

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// The test registry (see `risksense_testkit::test_registry`): `a`, `b` (half the
/// threshold), `renamed` and `trees`.
fn registry(root: &Path) -> ModelRegistry {
    risksense_testkit::test_registry(&models_dir(), root, 0.5);
    ModelRegistry::new(root)
}

fn load(root: &Path, name: &str) -> Arc<Model> {
    Arc::new(Model::load(&root.join(name), SessionOptions::default()).expect("loads"))
}

/// A stand-in for the stream's loop: applies pending changes every 20 ms while `on`.
fn stream_loop(
    control: Arc<ModelControl>,
    handle: Arc<ModelHandle>,
    on: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if on.load(Ordering::Relaxed) {
                control.apply_pending(&handle);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_stream_between_batches_and_a_misfit_changes_nothing() {
    let scratch = std::env::temp_dir().join(format!("risksense-control-{}", std::process::id()));
    let registry = registry(&scratch);
    let a = load(&scratch, "a");
    let mut control = ModelControl::new(a.clone(), None, Some(registry), SessionOptions::default())
        .expect("control");
    control.stream_timeout = Duration::from_millis(500);
    let control = Arc::new(control);
    let stream = Arc::new(ModelHandle::new(load(&scratch, "a")));
    let (on, stop) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    );
    control.attach_stream();
    let looping = stream_loop(control.clone(), stream.clone(), on.clone(), stop.clone());
    let ids = || (control.api().load().id.clone(), stream.load().id.clone());

    // A new champion: the stream and the API both switch, to separate instances of it.
    let changed = control
        .change(Slot::Champion, Some("b"))
        .await
        .expect("switched");
    let b_id = changed.current.clone().expect("b");
    assert!(b_id.starts_with("b@"), "{b_id}");
    assert_eq!(changed.previous.as_deref(), Some(a.id.as_str()));
    assert_eq!(ids(), (b_id.clone(), b_id.clone()));
    assert!(!Arc::ptr_eq(&control.api().load(), &stream.load()));
    assert_eq!(stream.load().card.threshold, a.card.threshold * 0.5);

    // Misfits are refused and change nothing: other features; a supervised champion.
    let error = control
        .change(Slot::Champion, Some("renamed"))
        .await
        .expect_err("misfit");
    assert!(matches!(error, ControlError::Refused(_)), "{error}");
    assert!(error.to_string().contains("log_amount"), "{error}");
    let error = control
        .change(Slot::Champion, Some("trees"))
        .await
        .expect_err("supervised");
    assert!(error.to_string().contains("supervised"), "{error}");
    let error = control
        .change(Slot::Champion, Some("nope"))
        .await
        .expect_err("unknown");
    assert!(matches!(error, ControlError::Registry(_)), "{error}");
    assert_eq!(ids(), (b_id.clone(), b_id.clone()));

    // The trees shadow the champion in both places; then they are removed.
    let changed = control
        .change(Slot::Challenger, Some("trees"))
        .await
        .expect("shadow");
    let trees_id = changed.current.expect("trees");
    assert_eq!(
        stream.challenger().map(|m| m.id.clone()),
        Some(trees_id.clone())
    );
    assert_eq!(
        control.api().challenger().map(|m| m.id.clone()),
        Some(trees_id)
    );
    control
        .change(Slot::Challenger, None)
        .await
        .expect("removed");
    assert!(stream.challenger().is_none() && control.api().challenger().is_none());

    // A stream that does not reach a batch boundary in time: the change is withdrawn, and
    // is not applied later either.
    on.store(false, Ordering::Relaxed);
    let error = control
        .change(Slot::Champion, Some("a"))
        .await
        .expect_err("busy");
    assert!(matches!(error, ControlError::StreamBusy(_)), "{error}");
    // A requester that gives up (its request dropped) withdraws the change too.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        control.change(Slot::Champion, Some("a")),
    )
    .await;
    assert!(gave_up.is_err(), "the stream was not taking changes");
    on.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ids(), (b_id.clone(), b_id.clone()));

    // An id names exact files: once the folder holds others, the change is refused.
    let a_id = a.id.clone();
    let mut card = ModelCard::read(&scratch.join("a")).expect("card");
    card.threshold *= 3.0;
    card.write(&scratch.join("a")).expect("rewritten");
    let error = control
        .change(Slot::Champion, Some(&a_id))
        .await
        .expect_err("other files");
    assert!(matches!(error, ControlError::Registry(_)), "{error}");
    assert_eq!(ids(), (b_id.clone(), b_id.clone()));

    // Once the stream has stopped, changes apply to the API alone.
    stop.store(true, Ordering::Relaxed);
    looping.join().expect("loop");
    control.detach_stream();
    let changed = control
        .change(Slot::Champion, Some("a"))
        .await
        .expect("by name");
    let a_now = changed.current.expect("a's new id");
    assert_ne!(a_now, a.id, "the rewritten files have another id");
    assert_eq!(ids(), (a_now, b_id));
    std::fs::remove_dir_all(&scratch).ok();
}

#[tokio::test]
async fn sighup_reload_switches_only_to_files_that_changed() {
    let scratch =
        std::env::temp_dir().join(format!("risksense-control-reload-{}", std::process::id()));
    let registry = registry(&scratch);
    let a = load(&scratch, "a");
    let control = ModelControl::new(a.clone(), None, Some(registry), SessionOptions::default())
        .expect("control");
    assert!(control.reload().await.is_empty(), "nothing changed on disk");
    // A recalibrated model written over the served folder.
    let mut card = ModelCard::read(&scratch.join("a")).expect("card");
    card.threshold *= 2.0;
    card.write(&scratch.join("a")).expect("rewritten");
    let results = control.reload().await;
    assert_eq!(results.len(), 1);
    let changed = results.into_iter().next().expect("one").expect("reloaded");
    assert_eq!(changed.previous.as_deref(), Some(a.id.as_str()));
    assert_ne!(changed.current.as_deref(), Some(a.id.as_str()));
    assert_eq!(control.api().load().card.threshold, a.card.threshold * 2.0);
    std::fs::remove_dir_all(&scratch).ok();
}
