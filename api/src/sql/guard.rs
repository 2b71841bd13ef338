//! Checks on a query's text and syntax tree before DataFusion plans it.
//!
//! DataFusion's planner and optimizer recurse once per operator, so `1+1+…+1` with a
//! thousand terms (a left-deep tree the parser builds in a loop, past its own recursion
//! limit) used to overflow the stack and abort the process. The tree's depth is measured
//! here, on the query pool's big stacks, and a query deeper than the limit is refused
//! with a 400 before any planning.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Query, SetExpr, Statement as SqlStatement, TableFactor, Visit, Visitor,
};

/// Why a query's text was refused before planning.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    #[error("the SQL text is {len} bytes; the limit is {limit}")]
    TooLong { len: usize, limit: usize },
    #[error(
        "the query nests expressions more than {limit} deep (a chain of {limit}+ operators or \
         nested calls); split it or use IN (…) / CASE lists"
    )]
    TooDeep { limit: usize },
    #[error("the query chains more than {limit} set operations (UNION / INTERSECT / EXCEPT)")]
    TooManySetOperations { limit: usize },
    #[error(
        "the query reads more than {limit} tables or subqueries (FROM lists and JOINs); the planner nests one level per relation"
    )]
    TooManyRelations { limit: usize },
    #[error(
        "the query has more than {limit} string concatenations (||); each copies its operands: use concat(…) once"
    )]
    TooManyConcatenations { limit: usize },
    #[error("only queries (SELECT, WITH, VALUES, EXPLAIN) are allowed here")]
    NotAQuery,
}

/// Limits on a query's shape.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of SQL text.
    pub max_text_bytes: usize,
    /// Nesting of expressions (operators, calls, subqueries).
    pub max_depth: usize,
    /// Set operations in one query body.
    pub max_set_operations: usize,
    /// Tables, subqueries and table functions in the whole query.
    pub max_relations: usize,
    /// `||` operators in the whole query.
    pub max_concatenations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_bytes: 256 * 1024,
            max_depth: 1_000,
            max_set_operations: 1_000,
            max_relations: 256,
            max_concatenations: 16,
        }
    }
}

/// Refuses text longer than the limit (before parsing: the tree of a long text is what
/// could be deep).
pub fn check_text(sql: &str, limits: &Limits) -> Result<(), GuardError> {
    if sql.len() > limits.max_text_bytes {
        return Err(GuardError::TooLong {
            len: sql.len(),
            limit: limits.max_text_bytes,
        });
    }
    Ok(())
}

/// Refuses statements that are not queries, and trees deeper than the limits.
pub fn check_statement(statement: &Statement, limits: &Limits) -> Result<(), GuardError> {
    let inner = match statement {
        Statement::Statement(inner) => inner.as_ref(),
        Statement::Explain(explain) => match explain.statement.as_ref() {
            Statement::Statement(inner) => inner.as_ref(),
            _ => return Err(GuardError::NotAQuery),
        },
        _ => return Err(GuardError::NotAQuery),
    };
    check_tree(inner, limits)
}

/// Refuses a parsed statement of any kind (a standing query's DDL too) whose tree is
/// deeper or wider than the limits.
pub fn check_tree(statement: &SqlStatement, limits: &Limits) -> Result<(), GuardError> {
    let mut depth = Depth {
        current: 0,
        relations: 0,
        concatenations: 0,
        limits: *limits,
    };
    match statement.visit(&mut depth) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(error) => Err(error),
    }
}

/// Measures expression depth as the visitor walks; breaks as soon as it passes the limit,
/// so the walk itself never recurses deeper than the limit.
struct Depth {
    current: usize,
    relations: usize,
    concatenations: usize,
    limits: Limits,
}

impl Visitor for Depth {
    type Break = GuardError;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<GuardError> {
        // `SELECT … UNION SELECT … UNION …` is a left-deep chain of set operations that
        // the planner also recurses through; count it without recursing.
        let mut operations = 0usize;
        let mut pending: Vec<&SetExpr> = vec![query.body.as_ref()];
        while let Some(expr) = pending.pop() {
            if let SetExpr::SetOperation { left, right, .. } = expr {
                operations += 1;
                if operations > self.limits.max_set_operations {
                    return ControlFlow::Break(GuardError::TooManySetOperations {
                        limit: self.limits.max_set_operations,
                    });
                }
                pending.push(left);
                pending.push(right);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, _factor: &TableFactor) -> ControlFlow<GuardError> {
        // `FROM a, b, c, …` and JOIN chains are flat here but one plan level each.
        self.relations += 1;
        if self.relations > self.limits.max_relations {
            return ControlFlow::Break(GuardError::TooManyRelations {
                limit: self.limits.max_relations,
            });
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<GuardError> {
        // `||` is an operator, not a function the bounded wrappers can see (see
        // `bounded`): each copies its operands, so their number is limited here.
        if let Expr::BinaryOp {
            op: BinaryOperator::StringConcat,
            ..
        } = expr
        {
            self.concatenations += 1;
            if self.concatenations > self.limits.max_concatenations {
                return ControlFlow::Break(GuardError::TooManyConcatenations {
                    limit: self.limits.max_concatenations,
                });
            }
        }
        self.current += 1;
        if self.current > self.limits.max_depth {
            return ControlFlow::Break(GuardError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<GuardError> {
        self.current -= 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn parse(sql: &str) -> Statement {
        let mut statements = DFParser::parse_sql(sql).expect("parses");
        statements.pop_front().expect("one statement")
    }

    /// Runs `f` on a thread with a big stack, as the query pool does (a 100k-deep tree is
    /// built and dropped here).
    fn on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024 * 1024)
            .spawn(f)
            .expect("thread")
            .join()
            .expect("no panic")
    }

    fn chain(terms: usize, op: &str) -> String {
        let mut sql = String::from("SELECT 1");
        for _ in 1..terms {
            sql.push_str(op);
            sql.push('1');
        }
        sql
    }

    #[test]
    fn ordinary_queries_pass() {
        let limits = Limits::default();
        for sql in [
            "SELECT category, count(*) FROM scored WHERE is_anomaly GROUP BY 1 ORDER BY 2 DESC",
            "WITH t AS (SELECT amt FROM scored) SELECT avg(amt) FROM t",
            "EXPLAIN SELECT 1",
            "SELECT 1 UNION ALL SELECT 2",
        ] {
            check_statement(&parse(sql), &limits).expect(sql);
        }
        // 500 terms stay under the default depth (walked on a big stack, as in the pool:
        // an unoptimised test build's frames are large).
        on_big_stack(|| check_statement(&parse(&chain(500, "+")), &Limits::default()))
            .expect("500 terms");
    }

    #[test]
    fn deep_chains_are_refused_before_planning() {
        let limits = Limits::default();
        // (`||` chains meet their own, lower limit: see the next test.)
        for op in ["+", " AND ", " OR "] {
            let deep = on_big_stack(move || {
                let statement = parse(&chain(100_000, op));
                check_statement(&statement, &Limits::default())
            });
            assert_eq!(
                deep,
                Err(GuardError::TooDeep {
                    limit: limits.max_depth
                }),
                "{op}"
            );
        }
        let unions = (0..1_500)
            .map(|_| "SELECT 1")
            .collect::<Vec<_>>()
            .join(" UNION ");
        assert!(matches!(
            check_statement(&parse(&unions), &limits),
            Err(GuardError::TooManySetOperations { .. })
        ));
    }

    #[test]
    fn relation_lists_and_concatenation_chains_are_bounded() {
        let limits = Limits::default();
        let tables = (0..300).map(|i| format!("scored t{i}")).collect::<Vec<_>>();
        let sql = format!("SELECT count(*) FROM {}", tables.join(", "));
        assert_eq!(
            on_big_stack(move || check_statement(&parse(&sql), &Limits::default())),
            Err(GuardError::TooManyRelations {
                limit: limits.max_relations
            })
        );
        let joins = (0..300)
            .map(|i| format!("JOIN scored t{i} USING (trans_num)"))
            .collect::<Vec<_>>();
        let sql = format!("SELECT count(*) FROM scored {}", joins.join(" "));
        assert!(matches!(
            on_big_stack(move || check_statement(&parse(&sql), &Limits::default())),
            Err(GuardError::TooManyRelations { .. })
        ));
        let sql = chain(100, " || ");
        assert!(matches!(
            on_big_stack(move || check_statement(&parse(&sql), &Limits::default())),
            Err(GuardError::TooManyConcatenations { .. })
        ));
        check_statement(&parse("SELECT 'a' || 'b' || 'c'"), &limits).expect("a few");
    }

    #[test]
    fn long_text_and_non_queries_are_refused() {
        let limits = Limits {
            max_text_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            check_text("SELECT 1 + 2 + 3", &limits),
            Err(GuardError::TooLong { len: 16, limit: 10 })
        ));
        assert_eq!(
            check_statement(
                &parse("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/tmp/x'"),
                &Limits::default()
            ),
            Err(GuardError::NotAQuery)
        );
    }
}
