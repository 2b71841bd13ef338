//! Planning a standing query: what it reads, whether it keeps state, and the DataFusion
//! plans it runs per micro-batch.
//!
//! A query over the stream is either
//! - **stateless** (filters, projections, function calls, joins with lookup tables): its
//!   whole plan runs over each micro-batch's rows; or
//! - a **windowed aggregate**: one `GROUP BY` holding one `tumble(…)` or `hop(…)`. Its
//!   physical plan is cut at the aggregate the way a distributed engine cuts it: the
//!   *partial* aggregate (and everything below it) runs per micro-batch and yields
//!   accumulator state per (bin, group); that state is kept per open window and, from time
//!   to time, merged (`PartialReduce`); when the watermark passes a window's end its bins'
//!   state goes through the *final* aggregate and what sits above it (HAVING, the SELECT
//!   list). DataFusion's own accumulators do the arithmetic, so any aggregate DataFusion
//!   has (count, sum, avg, min, max, count distinct, approx_percentile_cont, …) works.
//!
//! Everything else over an unbounded stream is refused when the query is created, saying
//! what is supported.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use risksense_query::scorer::{MicroBatchExec, MicroBatchTable, bind};
use risksense_query::scoring::{SessionOptions, new_session};

use crate::error::ContinuousError;
use crate::window::{HOP, TUMBLE, WindowSpec, interval_us, udfs};

/// The stream tables a query may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Every scored row (append-only).
    Scored,
    /// The decoded transactions before scoring.
    Transactions,
}

impl Source {
    /// The stream table named `table`, if it is one.
    pub fn of_table(table: &str) -> Option<Self> {
        [Source::Scored, Source::Transactions]
            .into_iter()
            .find(|source| source.table() == table)
    }

    pub fn table(self) -> &'static str {
        match self {
            Source::Scored => "scored",
            Source::Transactions => "transactions",
        }
    }
}

/// The event-time column of both stream tables.
pub const EVENT_TIME: &str = "trans_date_trans_time";

/// What queries can read: the two stream tables' schemas and the static lookup tables.
#[derive(Clone)]
pub struct Catalog {
    pub scored: SchemaRef,
    pub transactions: SchemaRef,
    pub lookups: BTreeMap<String, Arc<dyn TableProvider>>,
}

/// A query planned to run over micro-batches.
pub struct StandingPlan {
    pub source: Source,
    ctx: SessionContext,
    pub kind: PlanKind,
    /// The schema of the rows the query emits (a windowed one's with `window_end` added).
    pub output_schema: SchemaRef,
    /// Output columns naming a result (the window's start and the grouping columns): the
    /// default key of its Kafka records and Redis entries.
    pub key_columns: Vec<String>,
}

pub enum PlanKind {
    Stateless { plan: Arc<dyn ExecutionPlan> },
    Windowed(WindowedPlan),
}

/// The three pieces of a windowed aggregate's plan.
pub struct WindowedPlan {
    pub spec: WindowSpec,
    /// The input column the window is over (the event time).
    pub time_column: String,
    /// Input rows → accumulator state per (bin, group): the partial aggregate and below.
    partial: Arc<dyn ExecutionPlan>,
    /// State → merged state (`PartialReduce`): keeps a window's state one row per group.
    reduce: Arc<dyn ExecutionPlan>,
    /// State → results: the final aggregate and everything above it.
    upper: Arc<dyn ExecutionPlan>,
    pub state_schema: SchemaRef,
    /// Where the bin (a window's start, once expanded) is in the state.
    pub bin_column: usize,
    /// Where the window's start is in the output.
    pub window_output: usize,
}

impl StandingPlan {
    /// Plans `select` against `catalog`; refuses what a standing query cannot run.
    pub async fn new(select: &str, catalog: &Catalog) -> Result<Self, ContinuousError> {
        let ctx = session(catalog)?;
        let logical = ctx
            .sql(select)
            .await
            .map_err(ContinuousError::plan("planning the query"))?
            .into_unoptimized_plan();
        let shape = analyse(&logical)?;
        let physical = ctx
            .state()
            .create_physical_plan(&logical)
            .await
            .map_err(ContinuousError::plan("planning the query"))?;
        let output = physical.schema();
        match shape.window {
            None => Ok(Self {
                source: shape.source,
                ctx,
                kind: PlanKind::Stateless { plan: physical },
                output_schema: output,
                key_columns: Vec::new(),
            }),
            Some(window) => {
                let windowed = cut(physical, &window, &output)?;
                let mut fields: Vec<_> = output.fields().iter().cloned().collect();
                let start = &fields[windowed.window_output];
                fields.push(Arc::new(arrow::datatypes::Field::new(
                    "window_end",
                    start.data_type().clone(),
                    true,
                )));
                let output_schema = Arc::new(arrow::datatypes::Schema::new(fields));
                Ok(Self {
                    source: shape.source,
                    ctx,
                    kind: PlanKind::Windowed(windowed),
                    output_schema,
                    key_columns: window.key_outputs,
                })
            }
        }
    }

    /// Runs a stateless plan over `input`.
    pub async fn run_stateless(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        input: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>, ContinuousError> {
        self.run(plan, input, "running the query").await
    }

    async fn run(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        input: Vec<RecordBatch>,
        what: &str,
    ) -> Result<Vec<RecordBatch>, ContinuousError> {
        let bound = bind(plan, input.into()).map_err(ContinuousError::plan(what))?;
        collect(bound, self.ctx.task_ctx())
            .await
            .map_err(ContinuousError::plan(what))
    }

    /// Input rows → their accumulator state per (bin, group).
    pub async fn partial(
        &self,
        windowed: &WindowedPlan,
        input: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>, ContinuousError> {
        self.run(&windowed.partial, input, "aggregating a micro-batch")
            .await
    }

    /// Several state batches → one row per (bin, group).
    pub async fn reduce(
        &self,
        windowed: &WindowedPlan,
        state: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>, ContinuousError> {
        self.run(&windowed.reduce, state, "merging window state")
            .await
    }

    /// The state of closing windows (bins already replaced by window starts) → results.
    pub async fn finish(
        &self,
        windowed: &WindowedPlan,
        state: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>, ContinuousError> {
        self.run(&windowed.upper, state, "finishing windows").await
    }
}

/// A session with our scalar functions (no model: the scores are in `scored` already),
/// the window functions, the stream tables as micro-batch leaves and the lookups; one
/// partition, and partial and final aggregates left apart so the plan can be cut.
fn session(catalog: &Catalog) -> Result<SessionContext, ContinuousError> {
    let base = new_session(
        None,
        SessionOptions {
            target_partitions: 1,
            batch_size: 8192,
            memory_limit: None,
        },
    )?;
    let state = base.state();
    let rules = state
        .physical_optimizers()
        .iter()
        .filter(|rule| rule.name() != "CombinePartialFinalAggregate")
        .cloned()
        .collect();
    // count(DISTINCT x) stays one aggregate with a distinct accumulator (its state merges
    // across micro-batches); rewritten into two GROUP BYs it would count a value once per
    // micro-batch.
    let logical_rules = state
        .optimizers()
        .iter()
        .filter(|rule| rule.name() != "single_distinct_aggregation_to_group_by")
        .cloned()
        .collect();
    let state = SessionStateBuilder::new_from_existing(state)
        .with_physical_optimizer_rules(rules)
        .with_optimizer_rules(logical_rules)
        .build();
    let ctx = SessionContext::new_with_state(state);
    for udf in udfs() {
        ctx.register_udf(udf);
    }
    let register = |name: &str, table: Arc<dyn TableProvider>| {
        ctx.register_table(name, table)
            .map(|_| ())
            .map_err(ContinuousError::plan(format!("registering {name}")))
    };
    register(
        Source::Scored.table(),
        Arc::new(MicroBatchTable::new(catalog.scored.clone())),
    )?;
    register(
        Source::Transactions.table(),
        Arc::new(MicroBatchTable::new(catalog.transactions.clone())),
    )?;
    for (name, table) in &catalog.lookups {
        register(name, table.clone())?;
    }
    Ok(ctx)
}

const SUPPORTED: &str = "a standing query is a SELECT over scored or transactions (one of them, once) with filters, projections, function calls and joins with lookup tables, optionally aggregated with GROUP BY tumble(trans_date_trans_time, INTERVAL …) or hop(trans_date_trans_time, slide, width) and other grouping columns, with HAVING";

fn unsupported(what: &str) -> ContinuousError {
    ContinuousError::Unsupported(format!(
        "{what} is not supported over a stream; {SUPPORTED}"
    ))
}

/// A windowed aggregate's window as the logical plan shows it.
struct LogicalWindow {
    spec: WindowSpec,
    time_column: String,
    /// The window expression's name (the aggregate's output column).
    name: String,
    /// Output position of the window's start.
    output: usize,
    key_outputs: Vec<String>,
}

struct Shape {
    source: Source,
    window: Option<LogicalWindow>,
}

/// Checks the query is one a stream can run, and finds its source and window.
fn analyse(plan: &LogicalPlan) -> Result<Shape, ContinuousError> {
    let mut sources = Vec::new();
    let mut aggregates = Vec::new();
    let mut refusal: Option<ContinuousError> = None;
    plan.apply(|node| {
        let refuse = match node {
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::EmptyRelation(_)
            | LogicalPlan::Values(_) => None,
            LogicalPlan::TableScan(scan) => {
                sources.extend(Source::of_table(scan.table_name.table()));
                None
            }
            LogicalPlan::Aggregate(aggregate) => {
                aggregates.push(aggregate.clone());
                None
            }
            // A join with a lookup table; the stream on both sides is refused below (it
            // is read twice).
            LogicalPlan::Join(_) => None,
            LogicalPlan::Sort(_) => Some(unsupported("ORDER BY")),
            LogicalPlan::Limit(_) => Some(unsupported("LIMIT")),
            LogicalPlan::Window(_) => Some(unsupported("a window function (OVER …)")),
            LogicalPlan::Distinct(_) => Some(unsupported("SELECT DISTINCT without a window")),
            LogicalPlan::Union(_) => Some(unsupported("UNION")),
            LogicalPlan::Unnest(_) => Some(unsupported("UNNEST")),
            LogicalPlan::RecursiveQuery(_) => Some(unsupported("a recursive query")),
            other => Some(unsupported(
                other
                    .display()
                    .to_string()
                    .split(':')
                    .next()
                    .unwrap_or("this statement"),
            )),
        };
        if let Some(error) = refuse {
            refusal = Some(error);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(ContinuousError::plan("analysing the query"))?;
    if let Some(error) = refusal {
        return Err(error);
    }
    let source = match sources.as_slice() {
        [one] => *one,
        [] => {
            return Err(ContinuousError::Unsupported(format!(
                "the query reads neither scored nor transactions; {SUPPORTED}"
            )));
        }
        _ => {
            return Err(unsupported(
                "reading the stream twice (a stream–stream join)",
            ));
        }
    };
    let window = match aggregates.as_slice() {
        [] => None,
        [aggregate] => Some(window_of(plan, aggregate, source)?),
        _ => return Err(unsupported("more than one GROUP BY")),
    };
    Ok(Shape { source, window })
}

fn window_of(
    plan: &LogicalPlan,
    aggregate: &datafusion::logical_expr::Aggregate,
    source: Source,
) -> Result<LogicalWindow, ContinuousError> {
    let no_window = || {
        ContinuousError::Unsupported(format!(
            "an aggregate over a stream needs an event-time window: GROUP BY tumble({EVENT_TIME}, INTERVAL '1' MINUTE) or hop({EVENT_TIME}, INTERVAL '5' MINUTE, INTERVAL '1' HOUR), with any other grouping columns"
        ))
    };
    let mut windows = Vec::new();
    for expr in &aggregate.group_expr {
        if let Expr::ScalarFunction(call) = expr
            && matches!(call.func.name(), TUMBLE | HOP)
        {
            windows.push((expr, call));
        }
        if matches!(expr, Expr::GroupingSet(_)) {
            return Err(unsupported("GROUPING SETS, CUBE or ROLLUP"));
        }
    }
    let [(expr, call)] = windows.as_slice() else {
        return Err(if windows.is_empty() {
            no_window()
        } else {
            unsupported("more than one window in one GROUP BY")
        });
    };
    let time_column = match call.args.first() {
        Some(Expr::Column(column)) if column.name == EVENT_TIME => column.name.clone(),
        _ => {
            return Err(ContinuousError::Unsupported(format!(
                "a window is over the event time: {}({EVENT_TIME}, …)",
                call.func.name()
            )));
        }
    };
    let sizes = call.args[1..]
        .iter()
        .map(|arg| match arg {
            Expr::Literal(value, _) => interval_us(value),
            other => Err(ContinuousError::Unsupported(format!(
                "window sizes are interval literals such as INTERVAL '1' MINUTE, not {other}"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let spec = match sizes.as_slice() {
        [width] => WindowSpec::new(*width, *width)?,
        [slide, width] => WindowSpec::new(*slide, *width)?,
        _ => return Err(no_window()),
    };
    let _ = source;
    let name = expr.schema_name().to_string();
    // The SELECT list on top (through HAVING): which outputs are the window and the groups.
    let mut top = plan;
    let projection = loop {
        match top {
            LogicalPlan::Projection(projection) => break Some(projection),
            LogicalPlan::Filter(filter) => top = &filter.input,
            _ => break None,
        }
    };
    let select_window = || {
        ContinuousError::Unsupported(format!(
            "a windowed query must select its window, e.g. SELECT {}({EVENT_TIME}, …) AS window_start, …",
            call.func.name()
        ))
    };
    let projection = projection.ok_or_else(select_window)?;
    let mut output = None;
    let mut key_outputs = Vec::new();
    for (i, (e, field)) in projection
        .expr
        .iter()
        .zip(projection.schema.fields())
        .enumerate()
    {
        let inner = match e {
            Expr::Alias(alias) => alias.expr.as_ref(),
            other => other,
        };
        if let Expr::Column(column) = inner {
            if column.name == name {
                output.get_or_insert(i);
                key_outputs.insert(0, field.name().clone());
            } else if aggregate.group_expr.iter().any(|g| match g {
                Expr::Column(group) => group == column,
                other => other.schema_name().to_string() == column.name,
            }) {
                key_outputs.push(field.name().clone());
            }
        }
    }
    let output = output.ok_or_else(select_window)?;
    Ok(LogicalWindow {
        spec,
        time_column,
        name,
        output,
        key_outputs,
    })
}

/// Cuts a windowed aggregate's physical plan at its partial aggregate.
fn cut(
    physical: Arc<dyn ExecutionPlan>,
    window: &LogicalWindow,
    output: &SchemaRef,
) -> Result<WindowedPlan, ContinuousError> {
    let mut partials: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    physical
        .apply(|node| {
            if let Some(aggregate) = node.downcast_ref::<AggregateExec>()
                && *aggregate.mode() == AggregateMode::Partial
            {
                partials.push(Arc::clone(node));
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(ContinuousError::plan("cutting the plan"))?;
    let [partial] = partials.as_slice() else {
        return Err(ContinuousError::Unsupported(format!(
            "this aggregate plans as {} aggregation steps; a windowed query needs one (one GROUP BY with plain aggregates)",
            partials.len()
        )));
    };
    let partial = Arc::clone(partial);
    let aggregate = partial
        .downcast_ref::<AggregateExec>()
        .ok_or_else(|| ContinuousError::State("not an aggregate".to_string()))?;
    let state_schema = partial.schema();
    let bin_column = aggregate
        .group_expr()
        .expr()
        .iter()
        .position(|(_, name)| *name == window.name)
        .ok_or_else(|| {
            ContinuousError::Unsupported(format!(
                "the window {} is not a plain grouping column of the plan",
                window.name
            ))
        })?;
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(
        MicroBatchExec::try_new(&state_schema, None)
            .map_err(ContinuousError::plan("cutting the plan"))?,
    );
    let reduce: Arc<dyn ExecutionPlan> = Arc::new(
        AggregateExec::try_new(
            AggregateMode::PartialReduce,
            aggregate.group_expr().as_final(),
            aggregate.aggr_expr().to_vec(),
            vec![None; aggregate.aggr_expr().len()],
            Arc::clone(&leaf),
            aggregate.input_schema(),
        )
        .map_err(ContinuousError::plan("planning the state merge"))?,
    );
    let upper = physical
        .transform_down(|node| {
            if Arc::ptr_eq(&node, &partial) {
                Ok(Transformed::new(
                    Arc::clone(&leaf),
                    true,
                    TreeNodeRecursion::Jump,
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map_err(ContinuousError::plan("cutting the plan"))?
        .data;
    if upper.schema().fields().len() != output.fields().len() {
        return Err(ContinuousError::State(
            "cut plan changed its output".to_string(),
        ));
    }
    Ok(WindowedPlan {
        spec: window.spec,
        time_column: window.time_column.clone(),
        partial,
        reduce,
        upper,
        state_schema,
        bin_column,
        window_output: window.output,
    })
}
