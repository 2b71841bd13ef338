//! Which models a process serves with, and changes to them while it runs.
//!
//! A process scores in two places with separate ONNX Runtime sessions: the stream (its
//! plan's [`ModelHandle`]) and the API (ad-hoc scoring and SQL, through
//! [`ModelControl::api`]). A change (a new champion, a challenger or supervised model set or removed) is
//! loaded and checked here first, off the stream's thread; a model that does not fit the
//! plan is refused and nothing changes. The stream then applies it between two
//! micro-batches ([`ModelControl::apply_pending`], called by its loop), so every row of a
//! micro-batch is scored by one model and carries its id; the API's handle switches in the
//! same step, so the two never disagree (even when the requester gave up waiting). A
//! change the stream has not taken when its requester stops waiting (a timeout, a client
//! gone) is withdrawn: it happens everywhere or nowhere.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

pub use crate::handle::Slot;
use crate::handle::{ModelHandle, SwapError};
use crate::model::{Model, ModelError, SessionOptions};
use crate::registry::{ModelRegistry, RegistryError};

/// Why a change was not made. The models in service are then unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("loading model {dir}: {source}")]
    Load {
        dir: String,
        #[source]
        source: ModelError,
    },
    /// The model does not fit the running plan.
    #[error(transparent)]
    Refused(#[from] SwapError),
    #[error("the model's files changed while it was loaded ({first}, then {second}); try again")]
    Changed { first: String, second: String },
    /// The stream did not reach a micro-batch boundary in time (it may be stuck on a
    /// sink); nothing changed. Retryable.
    #[error("the stream did not take the change within {0:?} (nothing changed; retry)")]
    StreamBusy(Duration),
    #[error("the stream stopped before it took the change (nothing changed)")]
    StreamStopped,
    #[error("the champion cannot be removed, only replaced")]
    ChampionRequired,
    #[error("no registry folder is configured: models can only be changed by name from one")]
    NoRegistry,
}

/// Takes a change back out of the stream's queue unless the stream took it already.
struct Withdraw<'a> {
    control: &'a ModelControl,
    ticket: u64,
}

impl Withdraw<'_> {
    /// Withdraws it now; true if it was still waiting.
    fn now(self) -> bool {
        let withdrawn = self.take();
        std::mem::forget(self);
        withdrawn
    }

    fn take(&self) -> bool {
        let mut stream = self.control.stream.lock();
        let Some(pending) = stream.as_mut() else {
            return false;
        };
        let before = pending.len();
        pending.retain(|p| p.ticket != self.ticket);
        pending.len() < before
    }
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.take();
    }
}

/// What a change did.
#[derive(Debug, Clone)]
pub struct Changed {
    pub slot: Slot,
    /// The id of the model now in the slot (None: the slot was emptied).
    pub current: Option<String>,
    /// The id of the model that was there.
    pub previous: Option<String>,
}

struct Pending {
    ticket: u64,
    slot: Slot,
    /// The stream's instance and the API's, from the same files.
    for_stream: Option<Arc<Model>>,
    for_api: Option<Arc<Model>>,
    reply: oneshot::Sender<Result<Changed, SwapError>>,
}

/// The models in service and the changes the stream has yet to apply (see the module
/// documentation).
pub struct ModelControl {
    api: Arc<ModelHandle>,
    registry: Option<ModelRegistry>,
    options: SessionOptions,
    /// Some while a stream runs in this process: the changes it has not applied yet.
    stream: Mutex<Option<Vec<Pending>>>,
    /// Serialises changes: two at once would race between the stream and the API.
    changing: tokio::sync::Mutex<()>,
    /// Held by whoever changes a model and records the change for the group, and by the
    /// follower of the group's record (see [`Self::group_step`]).
    group: tokio::sync::Mutex<()>,
    tickets: std::sync::atomic::AtomicU64,
    /// How long a change waits for the stream to reach a micro-batch boundary.
    pub stream_timeout: Duration,
}

impl std::fmt::Debug for ModelControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelControl")
            .field("api", &self.api)
            .field("registry", &self.registry)
            .finish()
    }
}

impl ModelControl {
    /// Serves `champion` (and `challenger`) in the API; `registry` is where changes are
    /// found by name; `options` how changed models are loaded.
    pub fn new(
        champion: Arc<Model>,
        challenger: Option<Arc<Model>>,
        registry: Option<ModelRegistry>,
        options: SessionOptions,
    ) -> Result<Self, SwapError> {
        let control = Self::serving(champion, registry, options);
        control.api.set_challenger(challenger)?;
        Ok(control)
    }

    /// A fixed champion, no registry (tests, tools).
    pub fn fixed(champion: Arc<Model>) -> Arc<Self> {
        Arc::new(Self::serving(champion, None, SessionOptions::default()))
    }

    fn serving(
        champion: Arc<Model>,
        registry: Option<ModelRegistry>,
        options: SessionOptions,
    ) -> Self {
        Self {
            api: Arc::new(ModelHandle::new(champion)),
            registry,
            options,
            stream: Mutex::new(None),
            changing: tokio::sync::Mutex::new(()),
            group: tokio::sync::Mutex::new(()),
            tickets: std::sync::atomic::AtomicU64::new(0),
            stream_timeout: Duration::from_secs(60),
        }
    }

    /// The models the API scores with. Load it once per request.
    pub fn api(&self) -> &Arc<ModelHandle> {
        &self.api
    }

    pub fn registry(&self) -> Option<&ModelRegistry> {
        self.registry.as_ref()
    }

    /// A stream in this process applies changes from now on (until [`Self::detach_stream`]).
    /// Changes made from now on wait for it; attach before the API starts taking changes,
    /// so that none made while the stream is starting bypasses it (they wait for its first
    /// loop). Attaching again keeps what waits.
    pub fn attach_stream(&self) {
        self.stream.lock().get_or_insert_with(Vec::new);
    }

    /// The stream stopped: changes apply to the API alone; waiting ones fail.
    pub fn detach_stream(&self) {
        if let Some(pending) = self.stream.lock().take() {
            drop(pending); // their senders dropped: the waiters see StreamStopped
        }
    }

    /// Applies the changes waiting for the stream to its plan's handle. The stream calls
    /// this between micro-batches only.
    pub fn apply_pending(&self, stream: &ModelHandle) {
        let stream = Some(stream);
        let pending = match self.stream.lock().as_mut() {
            Some(pending) if !pending.is_empty() => std::mem::take(pending),
            _ => return,
        };
        for change in pending {
            let result = self.apply(stream, change.slot, change.for_stream, change.for_api);
            if let Ok(changed) = &result {
                tracing::info!(slot = %changed.slot, current = ?changed.current, previous = ?changed.previous, "model changed between micro-batches");
            }
            // Applied to both handles, whether or not the requester still waits.
            let _ = change.reply.send(result);
        }
    }

    /// Puts the models in the stream's handle (when there is a stream) and the API's.
    fn apply(
        &self,
        stream: Option<&ModelHandle>,
        slot: Slot,
        for_stream: Option<Arc<Model>>,
        for_api: Option<Arc<Model>>,
    ) -> Result<Changed, SwapError> {
        // Checked against both before either changes.
        if let Some(model) = &for_api {
            self.api.check(slot, model)?;
        }
        if let (Some(stream), Some(model)) = (stream, &for_stream) {
            stream.check(slot, model)?;
        }
        let current = for_api.as_ref().map(|m| m.id.clone());
        if let Some(stream) = stream {
            stream.put(slot, for_stream)?;
        }
        let previous = self.api.put(slot, for_api)?.map(|m| m.id.clone());
        Ok(Changed {
            slot,
            current,
            previous,
        })
    }

    /// Puts the registry's model `name` (folder name or id) in `slot`, or with `None`
    /// empties the slot (not the champion's). Loads and checks it first (a model that does not fit is
    /// refused and nothing changes), then waits for the stream, if one runs, to switch
    /// between micro-batches, then switches the API.
    pub async fn change(&self, slot: Slot, name: Option<&str>) -> Result<Changed, ControlError> {
        let dir = match name {
            Some(name) => Some(
                self.registry
                    .as_ref()
                    .ok_or(ControlError::NoRegistry)?
                    .resolve(name)?,
            ),
            None => None,
        };
        // An id names exact files: what loads must still be them.
        let pinned = name.filter(|n| n.contains('@'));
        self.change_to(slot, dir, pinned).await
    }

    /// One step with the group's record at a time: a change made here and its record, or
    /// reading the record and following it. Without it, the follower could read the
    /// record of the change before and undo one made here before it was recorded.
    pub async fn group_step(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.group.lock().await
    }

    /// Brings each slot to the model `served` records for it (`(slot, id)`, an empty id
    /// for an emptied slot; see the store's `served_models`), by id from the registry:
    /// how the processes of a group follow a change made through one of them. Slots
    /// without a record, or already serving their record, are left alone.
    /// Each attempt is returned with the record it followed (`(slot, id)`).
    pub async fn follow(
        &self,
        served: &[(String, String)],
    ) -> Vec<((String, String), Result<Changed, ControlError>)> {
        let mut results = Vec::new();
        for (name, id) in served {
            let Some(slot) = Slot::named(name) else {
                continue;
            };
            let current = self.api.in_slot(slot).map(|m| m.id.clone());
            let wanted = (!id.is_empty()).then_some(id.as_str());
            if current.as_deref() == wanted || (slot == Slot::Champion && wanted.is_none()) {
                continue;
            }
            let result = self.change(slot, wanted).await;
            results.push(((name.clone(), id.clone()), result));
        }
        results
    }

    /// Loads the models in their folders again and switches to those whose files changed
    /// (SIGHUP: a retrained model written over the served folder).
    pub async fn reload(&self) -> Vec<Result<Changed, ControlError>> {
        let mut results = Vec::new();
        for slot in Slot::ALL {
            let Some(model) = self.api.in_slot(slot) else {
                continue;
            };
            let changed = crate::model::digest_of(
                &model.dir.join("model.onnx"),
                &model.dir.join("model.json"),
            )
            .is_ok_and(|digest| digest != model.digest);
            if changed {
                results.push(self.change_to(slot, Some(model.dir.clone()), None).await);
            }
        }
        results
    }

    async fn change_to(
        &self,
        slot: Slot,
        dir: Option<std::path::PathBuf>,
        pinned: Option<&str>,
    ) -> Result<Changed, ControlError> {
        let _one_at_a_time = self.changing.lock().await;
        if slot == Slot::Champion && dir.is_none() {
            return Err(ControlError::ChampionRequired);
        }
        let streaming = self.stream.lock().is_some();
        let (for_api, for_stream) = match &dir {
            Some(dir) => {
                let api = self.load(slot, dir.clone()).await?;
                if let Some(id) = pinned
                    && api.id != id
                {
                    return Err(ControlError::Changed {
                        first: id.to_string(),
                        second: api.id.clone(),
                    });
                }
                self.api.check(slot, &api)?;
                // The stream gets sessions of its own (an ad-hoc query must never hold a
                // session the stream waits for), from the same files.
                let stream = if streaming {
                    let stream = self.load(slot, dir.clone()).await?;
                    if stream.digest != api.digest {
                        return Err(ControlError::Changed {
                            first: api.id.clone(),
                            second: stream.id.clone(),
                        });
                    }
                    Some(stream)
                } else {
                    None
                };
                (Some(api), stream)
            }
            None => (None, None),
        };
        if !streaming {
            let changed = self.apply(None, slot, None, for_api)?;
            tracing::info!(%slot, current = ?changed.current, previous = ?changed.previous, "model changed");
            return Ok(changed);
        }
        let ticket = self
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        match self.stream.lock().as_mut() {
            Some(pending) => pending.push(Pending {
                ticket,
                slot,
                for_stream,
                for_api,
                reply,
            }),
            None => return Err(ControlError::StreamStopped),
        }
        // Withdrawn if this future ends (or is dropped) before the stream took it.
        let withdraw = Withdraw {
            control: self,
            ticket,
        };
        let outcome = tokio::time::timeout(self.stream_timeout, answer).await;
        let withdrawn = withdraw.now();
        match outcome {
            Ok(Ok(result)) => Ok(result?),
            Ok(Err(_)) => Err(ControlError::StreamStopped),
            Err(_) if withdrawn => Err(ControlError::StreamBusy(self.stream_timeout)),
            // Taken between the deadline and the withdrawal: it was applied.
            Err(_) => Ok(Changed {
                slot,
                current: self.api.in_slot(slot).map(|m| m.id.clone()),
                previous: None,
            }),
        }
    }

    async fn load(&self, slot: Slot, dir: std::path::PathBuf) -> Result<Arc<Model>, ControlError> {
        let options = self.options;
        let shown = dir.display().to_string();
        let loaded = tokio::task::spawn_blocking(move || match slot {
            Slot::Champion => Model::load(&dir, options),
            Slot::Challenger => Model::load_any(&dir, options),
            Slot::Supervised => Model::load_supervised(&dir, options),
        })
        .await
        .map_err(|e| ControlError::Load {
            dir: shown.clone(),
            source: ModelError::Ort(format!("the loading task failed: {e}")),
        })?;
        loaded
            .map(Arc::new)
            .map_err(|source| ControlError::Load { dir: shown, source })
    }
}
