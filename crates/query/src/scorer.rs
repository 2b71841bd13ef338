//! The scoring plan for micro-batches: sql/features.sql + sql/score.sql planned once, then
//! executed again for every micro-batch.
//!
//! The stream's session registers the card window functions with a [`CardHistory`]: they
//! read each card's earlier rows from it and stage the batch's (see udfs/src/windows), so
//! a micro-batch goes through the SQL alone, without its cards' history rows.
//!
//! The physical plan is built once at start, over a `transactions` table whose scan is a
//! leaf that holds no rows ([`MicroBatchExec`]). Each [`StreamScorer::score`] call makes
//! its own copy of the plan in one walk up the tree: the leaf is replaced by one holding
//! the call's batches, every other operator gets fresh state (`reset_state`, what
//! DataFusion's `reset_plan_states` does). Nothing a call writes is shared with another
//! call, so calls may run at once (the API's `/v1/score` does), and a call costs what the
//! copy costs: no parsing, analysis or optimisation.
//!
//! The model functions read the session's [`ModelHandle`] once per batch, so
//! [`StreamScorer::model`] can move the plan to another model between batches.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::WindowUDF;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coop::cooperative;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream, collect,
};
use datafusion::prelude::SessionContext;
use risksense_udfs::windows::{CardHistory, CardWindow, order_by_card};
use risksense_udfs::{Model, ModelHandle};

use crate::error::QueryError;
use crate::scoring::{SessionOptions, TRANSACTIONS, install_views, new_session_with_handle};
use risksense_common::schema::transaction_schema;

/// The query the stream runs.
pub const STREAM_QUERY: &str = "SELECT * FROM scored";

/// A query planned once and run over each call's batches; calls may overlap.
pub struct StreamScorer {
    ctx: SessionContext,
    /// The plan as built: its leaves hold no rows and its operators no state. Never
    /// executed itself; each call runs a copy (see [`bind`]).
    plan: Arc<dyn ExecutionPlan>,
    model: Arc<ModelHandle>,
    history: Option<Arc<CardHistory>>,
}

impl StreamScorer {
    /// Plans the stream's scoring SQL against the model (which must fit the features),
    /// with an empty per-card history.
    pub async fn new(model: Arc<Model>, options: SessionOptions) -> Result<Self, QueryError> {
        Self::plan(model, options, STREAM_QUERY, Some(CardHistory::new())).await
    }

    /// Plans `query` over the features and scored views instead (e.g. `SELECT * FROM
    /// features` for ad-hoc scoring), without history: every call's rows stand alone, as
    /// in a batch job.
    pub async fn with_query(
        model: Arc<Model>,
        options: SessionOptions,
        query: &str,
    ) -> Result<Self, QueryError> {
        Self::plan(model, options, query, None).await
    }

    async fn plan(
        model: Arc<Model>,
        options: SessionOptions,
        query: &str,
        history: Option<Arc<CardHistory>>,
    ) -> Result<Self, QueryError> {
        let handle = Arc::new(ModelHandle::new(model.clone()));
        let ctx = new_session_with_handle(Some(handle.clone()), options)?;
        if let Some(history) = &history {
            // Replaces the batch versions registered by new_session.
            for window in CardWindow::all_with_history(history) {
                ctx.register_udwf(WindowUDF::from(window));
            }
        }
        ctx.register_table(
            TRANSACTIONS,
            Arc::new(MicroBatchTable {
                schema: transaction_schema(),
            }),
        )?;
        install_views(&ctx, Some(&model)).await?;
        let mut logical = ctx.sql(query).await?.into_unoptimized_plan();
        if history.is_some() {
            // One call of each card window per micro-batch, not one per card.
            logical = order_by_card(logical)?;
        }
        let plan = ctx.state().create_physical_plan(&logical).await?;
        Ok(Self {
            ctx,
            plan,
            model: handle,
            history,
        })
    }

    /// The per-card history the stream's plan reads and stages (None for `with_query`).
    pub fn history(&self) -> Option<&Arc<CardHistory>> {
        self.history.as_ref()
    }

    /// The handle the plan's model functions read once per batch:
    /// [`ModelHandle::swap`] moves every later batch to another model with the same
    /// features, keeping the plan and its per-card history.
    pub fn model(&self) -> &Arc<ModelHandle> {
        &self.model
    }

    /// Scores `batches` (rows of the transaction schema) and returns their scored rows.
    ///
    /// Re-entrant: each call runs its own copy of the plan over its own batches, so calls
    /// may overlap and each gets exactly its rows back. With history, what the card
    /// windows staged waits for [`CardHistory::commit_staged`] or
    /// [`CardHistory::discard_staged`]; the staging is the history's, not the call's, so a
    /// stream scores one micro-batch at a time and settles it before the next.
    pub async fn score(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, QueryError> {
        let plan = bind(&self.plan, batches.into())?;
        Ok(collect(plan, self.ctx.task_ctx()).await?)
    }

    /// The schema of the rows `score` returns.
    pub fn output_schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// The plan, for logs (`EXPLAIN`-like).
    pub fn display_plan(&self) -> String {
        datafusion::physical_plan::displayable(self.plan.as_ref())
            .indent(false)
            .to_string()
    }
}

/// A copy of `plan` ready to run over `input`: one walk up the tree that gives every
/// operator fresh state (as `reset_plan_states` does) and every micro-batch leaf `input`.
/// Any plan over [`MicroBatchTable`]s can be run again this way (the continuous queries
/// run theirs per micro-batch).
pub fn bind(
    plan: &Arc<dyn ExecutionPlan>,
    input: Arc<[RecordBatch]>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    Arc::clone(plan)
        .transform_up(|node| {
            let fresh: Arc<dyn ExecutionPlan> = match node.downcast_ref::<MicroBatchExec>() {
                Some(leaf) => Arc::new(leaf.with_input(Arc::clone(&input))),
                None => node.reset_state()?,
            };
            Ok(Transformed::yes(fresh))
        })
        .map(|t| t.data)
}

/// The stream session's `transactions`: scanned as a [`MicroBatchExec`] without rows, which
/// each call of [`StreamScorer::score`] replaces by one with its batches.
#[derive(Debug)]
pub struct MicroBatchTable {
    schema: SchemaRef,
}

impl MicroBatchTable {
    /// A table of `schema` whose scan holds no rows until [`bind`] gives it some.
    pub fn new(schema: SchemaRef) -> Self {
        Self { schema }
    }
}

#[async_trait::async_trait]
impl TableProvider for MicroBatchTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(MicroBatchExec::try_new(
            &self.schema,
            projection.cloned(),
        )?))
    }
}

/// A leaf that yields the batches it holds (projected), in one partition. The planned
/// leaf holds none; [`bind`] gives each call's copy of the plan a leaf with that call's
/// batches. Its properties are those of DataFusion's `LazyMemoryExec`, which it replaces,
/// so the plan around it is the one the stream always had.
#[derive(Debug, Clone)]
pub struct MicroBatchExec {
    /// Columns of the table's batches this scan yields (None: all).
    projection: Option<Vec<usize>>,
    /// Shared by every copy: the projected schema and how the output is laid out.
    properties: Arc<PlanProperties>,
    /// This copy's input, with all the table's columns.
    input: Arc<[RecordBatch]>,
}

impl MicroBatchExec {
    pub fn try_new(table: &SchemaRef, projection: Option<Vec<usize>>) -> DfResult<Self> {
        let schema = match &projection {
            Some(columns) => Arc::new(table.project(columns)?),
            None => Arc::clone(table),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::RoundRobinBatch(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
        .with_scheduling_type(SchedulingType::Cooperative);
        Ok(Self {
            projection,
            properties: Arc::new(properties),
            input: Arc::new([]),
        })
    }

    fn with_input(&self, input: Arc<[RecordBatch]>) -> Self {
        Self {
            projection: self.projection.clone(),
            properties: Arc::clone(&self.properties),
            input,
        }
    }
}

impl DisplayAs for MicroBatchExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "MicroBatchExec: batches={}", self.input.len())
    }
}

impl ExecutionPlan for MicroBatchExec {
    fn name(&self) -> &'static str {
        "MicroBatchExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return datafusion::common::internal_err!("MicroBatchExec has no children");
        }
        Ok(self)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return datafusion::common::internal_err!(
                "MicroBatchExec has one partition, asked for {partition}"
            );
        }
        let stream =
            MemoryStream::try_new(self.input.to_vec(), self.schema(), self.projection.clone())?;
        Ok(Box::pin(cooperative(stream)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use arrow::array::AsArray;
    use arrow::datatypes::Float64Type;
    use risksense_udfs::ModelCard;

    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn load(dir: &std::path::Path) -> Arc<Model> {
        Arc::new(Model::load(dir, risksense_udfs::SessionOptions::default()).expect("model"))
    }

    /// The fixture's 3,000 transactions in one batch.
    fn fixture() -> RecordBatch {
        let path = root().join("data/fixtures/sparkov-2019h1-head3000.csv");
        let batches: Vec<RecordBatch> =
            risksense_formats::source::TransactionFile::open(&path, 8192, false)
                .expect("fixture")
                .collect::<Result<_, _>>()
                .expect("rows");
        arrow::compute::concat_batches(&transaction_schema(), &batches).expect("concat")
    }

    /// `(trans_num, score, is_anomaly)` of scored rows, by trans_num.
    fn by_trans_num(batches: &[RecordBatch]) -> HashMap<String, (f64, bool)> {
        let mut out = HashMap::new();
        for batch in batches {
            let ids = batch
                .column_by_name("trans_num")
                .expect("id")
                .as_string::<i32>();
            let scores = batch
                .column_by_name("score")
                .expect("score")
                .as_primitive::<Float64Type>();
            let flags = batch
                .column_by_name("is_anomaly")
                .expect("flag")
                .as_boolean();
            for row in 0..batch.num_rows() {
                let previous = out.insert(
                    ids.value(row).to_string(),
                    (scores.value(row), flags.value(row)),
                );
                assert!(previous.is_none(), "{} twice", ids.value(row));
            }
        }
        out
    }

    /// Slices of the fixture of different lengths (1 to ~250 rows), covering it.
    fn chunks(all: &RecordBatch) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut len = 1;
        while start < all.num_rows() {
            let n = len.min(all.num_rows() - start);
            out.push(all.slice(start, n));
            start += n;
            len = len * 3 % 251 + 1;
        }
        out
    }

    /// Scores every chunk many times at once on a multi-threaded runtime and checks that
    /// each call got exactly its own rows, scored as when the calls run one by one.
    async fn concurrent_calls_get_their_own_rows(scorer: StreamScorer) {
        let all = fixture();
        let chunks = chunks(&all);
        assert!(chunks.len() > 20, "{}", chunks.len());
        let discard = |scorer: &StreamScorer| {
            if let Some(history) = scorer.history() {
                history.discard_staged();
            }
        };
        // One by one: the reference.
        let mut expected = Vec::new();
        for chunk in &chunks {
            expected.push(by_trans_num(
                &scorer.score(vec![chunk.clone()]).await.expect("scores"),
            ));
            discard(&scorer);
        }
        // Every chunk four times, all at once.
        let scorer = Arc::new(scorer);
        let mut calls = tokio::task::JoinSet::new();
        for round in 0..4 {
            for (i, chunk) in chunks.iter().enumerate() {
                let scorer = scorer.clone();
                // Some calls get their rows in two batches.
                let input = if round % 2 == 1 && chunk.num_rows() > 1 {
                    let half = chunk.num_rows() / 2;
                    vec![
                        chunk.slice(0, half),
                        chunk.slice(half, chunk.num_rows() - half),
                    ]
                } else {
                    vec![chunk.clone()]
                };
                calls.spawn(async move { (i, scorer.score(input).await) });
            }
        }
        let mut done = 0;
        while let Some(joined) = calls.join_next().await {
            let (i, scored) = joined.expect("task");
            let got = by_trans_num(&scored.expect("scores"));
            assert_eq!(got.len(), chunks[i].num_rows(), "chunk {i}: rows");
            for (id, (score, flag)) in &got {
                let (want, want_flag) = expected[i]
                    .get(id)
                    .unwrap_or_else(|| panic!("chunk {i} got another call's row {id}"));
                assert!(
                    (score - want).abs() <= 1e-9,
                    "chunk {i} {id}: {score} vs {want}"
                );
                assert_eq!(flag, want_flag);
            }
            done += 1;
        }
        assert_eq!(done, 4 * chunks.len());
        discard(&scorer);
    }

    fn options() -> SessionOptions {
        SessionOptions {
            target_partitions: 2,
            batch_size: 4096,
            memory_limit: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_without_history_each_get_their_own_rows() {
        let model = load(&root().join("models/default"));
        let scorer = StreamScorer::with_query(model, options(), "SELECT * FROM scored")
            .await
            .expect("plan");
        concurrent_calls_get_their_own_rows(scorer).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_of_the_stream_plan_each_get_their_own_rows() {
        let model = load(&root().join("models/default"));
        let scorer = StreamScorer::new(model, options()).await.expect("plan");
        concurrent_calls_get_their_own_rows(scorer).await;
    }

    #[tokio::test]
    async fn an_empty_call_returns_no_rows_and_the_plan_runs_again() {
        let model = load(&root().join("models/default"));
        let scorer = StreamScorer::new(model, options()).await.expect("plan");
        let out = scorer.score(Vec::new()).await.expect("empty");
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
        let rows = fixture().slice(0, 10);
        let out = scorer.score(vec![rows]).await.expect("scores");
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
        assert_eq!(out[0].schema(), scorer.output_schema());
    }

    #[tokio::test]
    async fn the_stream_plan_scores_with_the_model_swapped_in() {
        let default = root().join("models/default");
        let a = load(&default);
        // B: the same graph, a threshold no row reaches.
        let dir =
            std::env::temp_dir().join(format!("risksense-scorer-swap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::copy(default.join("model.onnx"), dir.join("model.onnx")).expect("copy");
        let mut card = ModelCard::read(&default).expect("card");
        card.threshold = 1e30;
        card.card_scores = None;
        card.write(&dir).expect("card");
        let b = load(&dir);

        let scorer = StreamScorer::new(a.clone(), options()).await.expect("plan");
        let history = scorer.history().expect("history").clone();
        let rows = fixture();
        let flagged =
            |batches: &[RecordBatch]| by_trans_num(batches).values().filter(|(_, f)| *f).count();
        let with_a = scorer.score(vec![rows.clone()]).await.expect("scores");
        history.discard_staged();
        assert!(
            flagged(&with_a) > 0,
            "the fixture has anomalies for the default model"
        );
        scorer.model().swap(b).expect("same features");
        let with_b = scorer.score(vec![rows]).await.expect("scores");
        history.discard_staged();
        assert_eq!(flagged(&with_b), 0);
        // The same graph: the same scores.
        let (a_rows, b_rows) = (by_trans_num(&with_a), by_trans_num(&with_b));
        for (id, (score, _)) in &a_rows {
            assert_eq!(*score, b_rows[id].0, "{id}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
