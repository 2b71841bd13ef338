//! The scoring plan for micro-batches: sql/features.sql + sql/score.sql planned once, then
//! executed again for every micro-batch.
//!
//! The stream's session registers the card window functions with a [`CardHistory`]: they
//! read each card's earlier rows from it and stage the batch's (see udfs/src/windows), so
//! a micro-batch goes through the SQL alone, without its cards' history rows.
//!
//! The `transactions` table of the stream session is a slot: its scan yields whatever
//! batches were put in the slot just before execution. The physical plan is built once at
//! start; each micro-batch runs a copy with fresh operator state
//! (`reset_plan_states`), which skips parsing, analysis and optimisation every time.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result as DfResult;
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::WindowUDF;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::memory::{LazyBatchGenerator, LazyMemoryExec};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use parking_lot::{Mutex, RwLock};
use risksense_udfs::Model;
use risksense_udfs::windows::{CardHistory, CardWindow, order_by_card};

use crate::error::QueryError;
use crate::scoring::{SessionOptions, TRANSACTIONS, install_views, new_session};
use risksense_common::schema::transaction_schema;

/// The query the stream runs.
pub const STREAM_QUERY: &str = "SELECT * FROM scored";

type Slot = Arc<Mutex<Vec<RecordBatch>>>;

pub struct StreamScorer {
    ctx: SessionContext,
    plan: Arc<dyn ExecutionPlan>,
    slot: Slot,
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
        let ctx = new_session(Some(model.clone()), options)?;
        if let Some(history) = &history {
            // Replaces the batch versions registered by new_session.
            for window in CardWindow::all_with_history(history) {
                ctx.register_udwf(WindowUDF::from(window));
            }
        }
        let slot: Slot = Arc::default();
        ctx.register_table(
            TRANSACTIONS,
            Arc::new(SlotTable {
                schema: transaction_schema(),
                slot: slot.clone(),
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
            slot,
            history,
        })
    }

    /// The per-card history the stream's plan reads and stages (None for `with_query`).
    pub fn history(&self) -> Option<&Arc<CardHistory>> {
        self.history.as_ref()
    }

    /// Scores `batches` and returns their scored rows. With history, what the card windows
    /// staged waits for [`CardHistory::commit_staged`] or [`CardHistory::discard_staged`].
    pub async fn score(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, QueryError> {
        *self.slot.lock() = batches;
        let plan = reset_plan_states(self.plan.clone());
        let result = match plan {
            Ok(plan) => collect(plan, self.ctx.task_ctx()).await,
            Err(error) => Err(error),
        };
        self.slot.lock().clear();
        Ok(result?)
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

#[derive(Debug)]
struct SlotTable {
    schema: SchemaRef,
    slot: Slot,
}

#[async_trait::async_trait]
impl TableProvider for SlotTable {
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
        let generator: Arc<RwLock<dyn LazyBatchGenerator>> = Arc::new(RwLock::new(SlotReader {
            slot: self.slot.clone(),
            pending: Vec::new(),
        }));
        let exec = LazyMemoryExec::try_new(self.schema.clone(), vec![generator])?
            .with_projection(projection.cloned());
        Ok(Arc::new(exec))
    }
}

/// Yields the slot's batches as they are when execution starts.
#[derive(Debug)]
struct SlotReader {
    slot: Slot,
    /// Still to yield, last first.
    pending: Vec<RecordBatch>,
}

impl std::fmt::Display for SlotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "micro-batch slot")
    }
}

impl LazyBatchGenerator for SlotReader {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn generate_next_batch(&mut self) -> DfResult<Option<RecordBatch>> {
        Ok(self.pending.pop())
    }

    fn reset_state(&self) -> Arc<RwLock<dyn LazyBatchGenerator>> {
        let mut pending = self.slot.lock().clone();
        pending.reverse();
        Arc::new(RwLock::new(SlotReader {
            slot: self.slot.clone(),
            pending,
        }))
    }
}
