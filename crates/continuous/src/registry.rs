//! The standing queries of a run: created from SQL files and through the API, listed with
//! their status and rates, deleted; and temporary ones for ad-hoc subscriptions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;
use serde::Serialize;

use crate::ddl::{self, Definition, OutputSpec};
use crate::error::ContinuousError;
use crate::output::{self, Connections};
use crate::plan::{Catalog, PlanKind, Source, StandingPlan};
use crate::query::{RunningQuery, Status, progress_key};

/// Where a query was declared: API queries are saved in the store and come back after a
/// restart; file queries come back with their files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    File,
    Api,
    Subscription,
    /// Over a bounded input (`rescore --query`): results are collected, not delivered.
    Batch,
}

/// A query as `GET /v1/queries` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QueryInfo {
    pub name: String,
    pub sql: String,
    pub origin: Origin,
    pub source: Source,
    /// `windowed` or `stateless`.
    pub kind: &'static str,
    pub output: OutputSpec,
    pub columns: Vec<String>,
    pub status: Status,
    pub rows_in: u64,
    pub rows_out: u64,
    pub rows_in_per_s: f64,
    pub rows_out_per_s: f64,
    pub late_rows: u64,
    pub windows_emitted: u64,
    pub subscribers: usize,
}

struct Entry {
    query: Arc<RunningQuery>,
    origin: Origin,
}

pub struct Registry {
    /// Set once the stream knows its scored schema ([`Registry::attach`]).
    catalog: RwLock<Catalog>,
    connections: RwLock<Connections>,
    /// Key prefix for what the queries keep in the store (their progress).
    prefix: String,
    queries: RwLock<BTreeMap<String, Entry>>,
    next_subscription: AtomicU64,
    attached: std::sync::atomic::AtomicBool,
    /// Whose progress the queries save: the stream's consumer group and topic (two groups
    /// reading one topic each emit every window).
    scope: RwLock<String>,
}

impl Registry {
    pub fn new(catalog: Catalog, connections: Connections, prefix: &str) -> Arc<Self> {
        Arc::new(Self {
            catalog: RwLock::new(catalog),
            connections: RwLock::new(connections),
            prefix: prefix.to_string(),
            queries: RwLock::new(BTreeMap::new()),
            next_subscription: AtomicU64::new(0),
            attached: std::sync::atomic::AtomicBool::new(true),
            scope: RwLock::new("default".to_string()),
        })
    }

    /// A registry whose stream is still starting: queries can be created once the stream
    /// [`attach`](Self::attach)es its schema and Kafka producer.
    pub fn pending(
        lookups: BTreeMap<String, Arc<dyn datafusion::catalog::TableProvider>>,
        store: Option<risksense_store::Store>,
        prefix: &str,
    ) -> Arc<Self> {
        let registry = Self::new(
            Catalog {
                scored: Arc::new(arrow::datatypes::Schema::empty()),
                transactions: Arc::new(arrow::datatypes::Schema::empty()),
                lookups,
            },
            Connections {
                producer: None,
                store,
                kafka: None,
            },
            prefix,
        );
        registry.attached.store(false, Ordering::Relaxed);
        registry
    }

    /// The stream's tables and its Kafka producer: queries can be created from now on.
    pub fn attach(
        &self,
        scored: arrow::datatypes::SchemaRef,
        transactions: arrow::datatypes::SchemaRef,
        producer: Option<rdkafka::producer::FutureProducer>,
        kafka: Option<risksense_connectors::kafka::KafkaSettings>,
        scope: &str,
    ) {
        *self.scope.write() = scope.to_string();
        self.connections.write().kafka = kafka;
        {
            let mut catalog = self.catalog.write();
            catalog.scored = scored;
            catalog.transactions = transactions;
        }
        self.connections.write().producer = producer;
        self.attached.store(true, Ordering::Relaxed);
    }

    fn catalog(&self) -> Result<Catalog, ContinuousError> {
        if !self.attached.load(Ordering::Relaxed) {
            return Err(ContinuousError::Unavailable(
                "the stream is still starting; try again in a moment".to_string(),
            ));
        }
        Ok(self.catalog.read().clone())
    }

    fn store(&self) -> Option<risksense_store::Store> {
        self.connections.read().store.clone()
    }

    /// Plans and starts every query `script` declares (all or none); API queries are
    /// saved so they survive restarts. Returns their names.
    pub async fn create(
        &self,
        script: &str,
        origin: Origin,
    ) -> Result<Vec<String>, ContinuousError> {
        self.create_saving(script, origin, origin == Origin::Api)
            .await
    }

    /// [`create`](Self::create), saving the definitions in the store when `save`.
    async fn create_saving(
        &self,
        script: &str,
        origin: Origin,
        save: bool,
    ) -> Result<Vec<String>, ContinuousError> {
        let definitions = ddl::parse(script)?;
        let mut planned = Vec::new();
        for definition in definitions {
            if self.queries.read().contains_key(&definition.name)
                || planned
                    .iter()
                    .any(|(d, _): &(Definition, _)| d.name == definition.name)
            {
                return Err(ContinuousError::Exists(format!(
                    "query {}",
                    definition.name
                )));
            }
            let plan = self.plan(&definition).await?;
            planned.push((definition, plan));
        }
        let mut names = Vec::new();
        for (definition, plan) in planned {
            let name = definition.name.clone();
            if save && let Some(store) = self.store() {
                store.save_query(&name, &definition.sql).await?;
            }
            self.start(definition, plan, origin).await?;
            names.push(name);
        }
        Ok(names)
    }

    async fn plan(&self, definition: &Definition) -> Result<StandingPlan, ContinuousError> {
        let plan = StandingPlan::new(&definition.select, &self.catalog()?).await?;
        let produced: Vec<String> = plan
            .output_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        if !definition.columns.is_empty() {
            let declared: Vec<&String> = definition.columns.iter().collect();
            let wanted: Vec<&String> = produced
                .iter()
                .filter(|c| c.as_str() != "window_end")
                .collect();
            if declared != wanted {
                return Err(ContinuousError::Unsupported(format!(
                    "{} declares columns ({}) but its SELECT produces ({})",
                    definition.name,
                    definition.columns.join(", "),
                    produced.join(", ")
                )));
            }
        }
        match &definition.output {
            OutputSpec::Redis { key, .. } => output::check_template(key, &produced)?,
            OutputSpec::Kafka { key, .. } => {
                for column in key {
                    if !produced.contains(column) {
                        return Err(ContinuousError::Unsupported(format!(
                            "key column {column} is not one the query produces ({})",
                            produced.join(", ")
                        )));
                    }
                }
            }
            _ => {}
        }
        Ok(plan)
    }

    async fn start(
        &self,
        definition: Definition,
        plan: StandingPlan,
        origin: Origin,
    ) -> Result<Arc<RunningQuery>, ContinuousError> {
        let name = definition.name.clone();
        let connections = self.connections.read().clone();
        if let (OutputSpec::Kafka { topic, .. }, Some(kafka)) =
            (&definition.output, &connections.kafka)
        {
            risksense_connectors::kafka::ensure_topic(kafka, topic, 4).await?;
        }
        let output = if origin == Origin::Batch {
            None
        } else {
            output::build(&name, &definition.output, &plan.key_columns, &connections)?
        };
        let windowed = matches!(plan.kind, PlanKind::Windowed(_));
        let temporary = matches!(origin, Origin::Subscription | Origin::Batch);
        let progress = match (connections.store, windowed && !temporary) {
            (Some(store), true) => {
                let scope = self.scope.read().clone();
                Some((store, progress_key(&self.prefix, &scope, &name)))
            }
            _ => None,
        };
        let saved = match &progress {
            Some((store, key)) => store.read_output_hash(key).await?.and_then(|fields| {
                fields
                    .into_iter()
                    .find(|(k, _)| k == "emitted_through")
                    .and_then(|(_, v)| v.parse::<i64>().ok())
            }),
            None => None,
        };
        let query = RunningQuery::start(definition, plan, output, progress, temporary);
        if let Some(through) = saved {
            // Windows delivered before a restart are not delivered again.
            query.skip_through(through).await?;
        }
        tracing::info!(query = %name, ?origin, windowed, "standing query started");
        self.queries.write().insert(
            name,
            Entry {
                query: query.clone(),
                origin,
            },
        );
        Ok(query)
    }

    /// Reads a lookup table (CSV with a header, or Parquet: a file or a folder) into
    /// memory, to join standing queries with.
    pub async fn load_lookup(
        path: &Path,
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>, ContinuousError> {
        let ctx = datafusion::prelude::SessionContext::new();
        let text = path.display().to_string();
        let frame = if text.ends_with(".csv") {
            ctx.read_csv(&text, datafusion::prelude::CsvReadOptions::new())
                .await
        } else {
            ctx.read_parquet(&text, datafusion::prelude::ParquetReadOptions::default())
                .await
        }
        .map_err(ContinuousError::plan(format!(
            "reading lookup table {text}"
        )))?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame
            .collect()
            .await
            .map_err(ContinuousError::plan(format!(
                "reading lookup table {text}"
            )))?;
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches]).map_err(
            ContinuousError::plan(format!("reading lookup table {text}")),
        )?;
        Ok(Arc::new(table))
    }

    /// Loads every `*.sql` file of `dir` (sorted by name).
    pub async fn load_dir(&self, dir: &Path) -> Result<Vec<String>, ContinuousError> {
        let io = |source| ContinuousError::Io {
            what: format!("reading {}", dir.display()),
            source,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        let mut names = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| ContinuousError::Io {
                what: format!("reading {}", file.display()),
                source,
            })?;
            let created = self.create(&text, Origin::File).await.map_err(|error| {
                ContinuousError::Unsupported(format!("{}: {error}", file.display()))
            })?;
            names.extend(created);
        }
        Ok(names)
    }

    /// Starts the queries created through the API before a restart.
    pub async fn load_saved(&self) -> Result<Vec<String>, ContinuousError> {
        let Some(store) = self.store() else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for (name, sql) in store.load_queries().await? {
            if self.queries.read().contains_key(&name) {
                continue;
            }
            // Still the API's (deleting it forgets it for good), and saved already.
            match self.create_saving(&sql, Origin::Api, false).await {
                Ok(created) => names.extend(created),
                Err(error) => {
                    tracing::error!(query = %name, %error, "a saved query no longer plans; skipped")
                }
            }
        }
        Ok(names)
    }

    /// Stops and forgets a query (and its saved definition).
    pub async fn delete(&self, name: &str) -> Result<(), ContinuousError> {
        let entry = self
            .queries
            .write()
            .remove(name)
            .ok_or_else(|| ContinuousError::NotFound(name.to_string()))?;
        entry.query.stop();
        if entry.origin == Origin::Api
            && let Some(store) = self.store()
        {
            store.delete_query(name).await?;
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<RunningQuery>> {
        self.queries.read().get(name).map(|e| e.query.clone())
    }

    /// The queries that run over each micro-batch.
    pub fn running(&self) -> Vec<Arc<RunningQuery>> {
        self.queries
            .read()
            .values()
            .map(|e| e.query.clone())
            .collect()
    }

    pub fn list(&self, include_subscriptions: bool) -> Vec<QueryInfo> {
        self.queries
            .read()
            .values()
            .filter(|e| include_subscriptions || e.origin != Origin::Subscription)
            .map(|e| info(&e.query, e.origin))
            .collect()
    }

    pub fn info(&self, name: &str) -> Option<QueryInfo> {
        self.queries
            .read()
            .get(name)
            .map(|e| info(&e.query, e.origin))
    }

    /// Starts a temporary query for one subscriber: a SELECT over `scored` or
    /// `transactions`, running until the returned handle is dropped.
    pub async fn subscribe(
        self: &Arc<Self>,
        select: &str,
    ) -> Result<Subscription, ContinuousError> {
        // One SELECT, nothing else: planning runs the statement in a session of its own.
        let statements = datafusion::sql::sqlparser::parser::Parser::parse_sql(
            &datafusion::sql::sqlparser::dialect::GenericDialect {},
            select,
        )
        .map_err(|error| ContinuousError::Parse(error.to_string()))?;
        if !matches!(
            statements.as_slice(),
            [datafusion::sql::sqlparser::ast::Statement::Query(_)]
        ) {
            return Err(ContinuousError::Unsupported(
                "a subscription is one SELECT … FROM scored (or transactions)".to_string(),
            ));
        }
        let n = self.next_subscription.fetch_add(1, Ordering::Relaxed);
        let name = format!("_subscription_{n}");
        let definition = Definition {
            name: name.clone(),
            select: select.to_string(),
            output: OutputSpec::View,
            columns: Vec::new(),
            lateness_us: ddl::DEFAULT_LATENESS_US,
            sql: select.to_string(),
        };
        let plan = self.plan(&definition).await?;
        let query = self.start(definition, plan, Origin::Subscription).await?;
        Ok(Subscription {
            receiver: query.subscribe(),
            query,
            registry: Arc::downgrade(self),
        })
    }
}

fn info(query: &RunningQuery, origin: Origin) -> QueryInfo {
    let (in_rate, out_rate) = query.stats.rates();
    let definition = &query.definition;
    QueryInfo {
        name: definition.name.clone(),
        sql: definition.sql.clone(),
        origin,
        source: query.plan.source,
        kind: if query.is_windowed() {
            "windowed"
        } else {
            "stateless"
        },
        output: definition.output.clone(),
        columns: query
            .plan
            .output_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        status: query.status(),
        rows_in: query.stats.rows_in.load(Ordering::Relaxed),
        rows_out: query.stats.rows_out.load(Ordering::Relaxed),
        rows_in_per_s: in_rate,
        rows_out_per_s: out_rate,
        late_rows: query.stats.late_rows.load(Ordering::Relaxed),
        windows_emitted: query.stats.windows_emitted.load(Ordering::Relaxed),
        subscribers: query.subscribers(),
    }
}

/// An ad-hoc subscription: its query runs while this lives.
pub struct Subscription {
    pub query: Arc<RunningQuery>,
    pub receiver: tokio::sync::broadcast::Receiver<std::sync::Arc<arrow::array::RecordBatch>>,
    registry: Weak<Registry>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.queries.write().remove(self.query.name());
            self.query.stop();
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("queries", &self.queries.read().keys().collect::<Vec<_>>())
            .finish()
    }
}
