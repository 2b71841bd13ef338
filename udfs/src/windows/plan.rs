//! One window call per micro-batch instead of one per card: a plan rewrite for the stream.
//!
//! sql/features.sql runs the card windows `OVER (PARTITION BY cc_num ORDER BY …)`, which a
//! batch job needs (a partition holds all of a card's rows, and partitions run in
//! parallel). DataFusion evaluates such a window once per partition: in a micro-batch,
//! where most cards have one or two rows, that is every function once per card, slicing
//! the batch and evaluating the arguments each time (most of the stream's scoring time).
//! The card windows take the card as their first argument and handle a partition of
//! several cards ordered by card (each card's rows are one run: see `CardEvaluator`), so
//! the stream can order by the card instead of partitioning by it. Same rows per card,
//! same order within a card, same arithmetic: the same values.

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, internal_err};
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{Expr, LogicalPlan, Window, WindowFunctionDefinition};

use super::Kind;

/// Rewrites every window node of `plan` whose calls are all card windows partitioned by
/// their card argument: `OVER (PARTITION BY card ORDER BY o)` becomes
/// `OVER (ORDER BY card, o)`, each call keeping its output name.
pub fn order_by_card(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| {
        let LogicalPlan::Window(window) = node else {
            return Ok(Transformed::no(node));
        };
        if !window.window_expr.iter().all(is_partitioned_card_window) {
            return Ok(Transformed::no(LogicalPlan::Window(window)));
        }
        let Window {
            input,
            window_expr,
            schema,
            ..
        } = window;
        let window_expr = window_expr
            .into_iter()
            .map(|expr| {
                let name = expr.schema_name().to_string();
                let Expr::WindowFunction(call) = expr.unalias() else {
                    return internal_err!("not a window call: {name}");
                };
                let WindowFunction { fun, mut params } = *call;
                let mut order_by: Vec<_> = params
                    .partition_by
                    .drain(..)
                    .map(|p| p.sort(true, false))
                    .collect();
                order_by.append(&mut params.order_by);
                params.order_by = order_by;
                Ok(Expr::WindowFunction(Box::new(WindowFunction { fun, params })).alias(name))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformed::yes(LogicalPlan::Window(
            Window::try_new_with_schema(window_expr, input, schema)?,
        )))
    })
    .map(|transformed| transformed.data)
}

fn is_partitioned_card_window(expr: &Expr) -> bool {
    let call = match expr {
        Expr::WindowFunction(call) => call,
        Expr::Alias(alias) => match alias.expr.as_ref() {
            Expr::WindowFunction(call) => call,
            _ => return false,
        },
        _ => return false,
    };
    let WindowFunctionDefinition::WindowUDF(udf) = &call.fun else {
        return false;
    };
    // Only `PARTITION BY <the card argument>`: partitioned by anything else, the function's
    // card runs would not be the partitions.
    Kind::ALL.iter().any(|kind| kind.name() == udf.name())
        && call.params.partition_by.len() == 1
        && call.params.args.first() == call.params.partition_by.first()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
    use datafusion::logical_expr::WindowUDF;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    use super::order_by_card;
    use crate::windows::CardWindow;

    const QUERY: &str = "SELECT row_id,
        secs_since_previous(card, t) OVER w AS since,
        rolling_sum_24h(card, t, x) OVER w AS sum_24h,
        mean_of_previous(card, t, x, 2) OVER w AS mean_2
      FROM rows
      WINDOW w AS (PARTITION BY card ORDER BY t, row_id)";

    /// Three cards' rows interleaved, some in the same second.
    fn session() -> SessionContext {
        let ctx = SessionContext::new();
        for window in CardWindow::all() {
            ctx.register_udwf(WindowUDF::from(window));
        }
        let n = 60i64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("row_id", DataType::Int64, false),
            Field::new("card", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|i| [7, 3, 5][(i % 3) as usize]),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|i| (i / 2) * 20_000),
                )),
                Arc::new(Float64Array::from_iter(
                    (0..n).map(|i| (i % 7 != 0).then_some((i * 13 % 29) as f64)),
                )),
            ],
        )
        .expect("a valid batch");
        ctx.register_batch("rows", batch).expect("registered");
        ctx
    }

    async fn run(ctx: &SessionContext, rewrite: bool) -> (String, Vec<(i64, [Option<f64>; 3])>) {
        let mut plan = ctx
            .sql(QUERY)
            .await
            .expect("planned")
            .into_unoptimized_plan();
        if rewrite {
            plan = order_by_card(plan).expect("rewritten");
        }
        let shown = plan.display_indent().to_string();
        let physical = ctx
            .state()
            .create_physical_plan(&plan)
            .await
            .expect("physical plan");
        let batches = collect(physical, ctx.task_ctx()).await.expect("executed");
        let mut rows = Vec::new();
        for batch in &batches {
            let ids = batch.column(0).as_primitive::<Int64Type>();
            let value = |c: usize, i: usize| {
                let column = batch.column(c).as_primitive::<Float64Type>();
                column.is_valid(i).then(|| column.value(i))
            };
            for i in 0..batch.num_rows() {
                rows.push((ids.value(i), [value(1, i), value(2, i), value(3, i)]));
            }
        }
        rows.sort_by_key(|(id, _)| *id);
        (shown, rows)
    }

    #[tokio::test]
    async fn ordering_by_the_card_gives_what_partitioning_by_it_gives() {
        let ctx = session();
        let (partitioned_plan, partitioned) = run(&ctx, false).await;
        let (ordered_plan, ordered) = run(&ctx, true).await;
        // (The rewritten calls keep their old names, which still say PARTITION BY.)
        let by_card = "ORDER BY [rows.card ASC NULLS LAST, rows.t ASC NULLS LAST";
        assert!(!partitioned_plan.contains(by_card), "{partitioned_plan}");
        assert_eq!(ordered_plan.matches(by_card).count(), 3, "{ordered_plan}");
        assert_eq!(ordered.len(), 60);
        assert_eq!(ordered, partitioned);
        // Each card's first row has no previous row, the others do.
        assert_eq!(ordered.iter().filter(|(_, v)| v[0].is_none()).count(), 3);
    }

    #[tokio::test]
    async fn windows_partitioned_by_something_else_are_left_alone() {
        let ctx = session();
        let plan = ctx
            .sql("SELECT rolling_sum_24h(card, t, x) OVER (PARTITION BY x ORDER BY t) FROM rows")
            .await
            .expect("planned")
            .into_unoptimized_plan();
        let before = plan.display_indent().to_string();
        let after = order_by_card(plan).expect("rewritten");
        assert_eq!(after.display_indent().to_string(), before);
    }

    #[tokio::test]
    async fn cards_out_of_order_in_one_partition_are_refused() {
        let ctx = session();
        let error = ctx
            .sql("SELECT rolling_sum_24h(card, t, x) OVER (ORDER BY t, row_id) FROM rows")
            .await
            .expect("planned")
            .collect()
            .await
            .expect_err("interleaved cards in one partition");
        assert!(error.to_string().contains("ordered by it first"), "{error}");
    }
}
