//! `risksense evaluate`: the champion against the challenger it shadowed, over the archive.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int32Type};
use risksense_query::scoring::{self, SessionOptions};
use risksense_trainer::evaluate::{Comparison, ModelFigures, Scored, compare};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Scored rows with labels: the stream's Parquet archive (a folder, file or glob) or
    /// `rescore --challenger` output. Rows without `is_fraud` are left out.
    #[arg(long, short, required = true, num_args = 1..)]
    pub archive: Vec<PathBuf>,
    /// Labels learnt later (the labels table `run` writes beside the archive, a folder of
    /// Parquet files of `trans_num`, `is_fraud`, `labelled_at`): they replace the rows'
    /// `is_fraud`, the first label of a `trans_num` counting; unlabelled rows are left out.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Print the comparisons as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

struct Pair {
    champion: Option<String>,
    challenger: Option<String>,
    comparison: Comparison,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    let pairs = runtime.block_on(read(&args.archive, args.labels.as_deref()))?;
    if pairs.is_empty() {
        anyhow::bail!(
            "no labelled rows in {}: evaluation needs `is_fraud` on the scored rows",
            args.archive
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let pairs: Vec<Pair> = pairs
        .into_iter()
        .map(|((champion, challenger), rows)| Pair {
            champion,
            challenger,
            comparison: compare(&rows),
        })
        .collect();
    if args.json {
        let pairs: Vec<serde_json::Value> = pairs
            .iter()
            .map(|p| {
                serde_json::json!({
                    "champion": p.champion,
                    "challenger": p.challenger,
                    "comparison": p.comparison,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&pairs)?);
        return Ok(());
    }
    for pair in &pairs {
        print_table(pair);
    }
    Ok(())
}

/// The labelled rows by (champion id, challenger id).
async fn read(
    inputs: &[PathBuf],
    labels: Option<&std::path::Path>,
) -> anyhow::Result<BTreeMap<(Option<String>, Option<String>), Vec<Scored>>> {
    if inputs.len() != 1 {
        anyhow::bail!(
            "give the scored rows as one folder, file or quoted glob (e.g. 'archive/*.parquet')"
        );
    }
    let ctx = scoring::new_session(None, SessionOptions::default())?;
    scoring::register_files(&ctx, "scored_rows", inputs)
        .await
        .context("reading the archive")?;
    match labels {
        Some(dir) => {
            scoring::register_files(&ctx, "labels", &[dir.to_path_buf()])
                .await
                .with_context(|| format!("reading the labels in {}", dir.display()))?;
            // A trans_num's first label counts (a replay may have written it twice).
            ctx.sql(
                "CREATE VIEW archive AS \
                 WITH first_labels AS (SELECT trans_num, is_fraud, row_number() OVER \
                   (PARTITION BY trans_num ORDER BY labelled_at) AS nth FROM labels) \
                 SELECT s.* EXCLUDE (is_fraud), l.is_fraud FROM scored_rows s \
                 JOIN first_labels l ON s.trans_num = l.trans_num AND l.nth = 1",
            )
            .await
            .context("joining the labels")?;
        }
        None => {
            ctx.sql("CREATE VIEW archive AS SELECT * FROM scored_rows")
                .await?;
        }
    }
    let schema = ctx.table("archive").await?.schema().as_arrow().clone();
    for needed in ["score", "is_anomaly", "is_fraud"] {
        if schema.field_with_name(needed).is_err() {
            anyhow::bail!("the input has no `{needed}` column: is it scored rows?");
        }
    }
    // Each column cast to what is read below (a file written by another tool may hold
    // other, compatible types); rows archived before ids and shadow models have neither.
    let column = |name: &str, cast: &str| {
        if schema.field_with_name(name).is_ok() {
            format!("CAST({name} AS {cast}) AS {name}")
        } else {
            format!("CAST(NULL AS {cast}) AS {name}")
        }
    };
    // The champion's own flag: with a supervised model beside it, is_anomaly is either's.
    // (Rows archived before anomaly_flag existed read it as null: is_anomaly was it.)
    let champion_flag = if schema.field_with_name("anomaly_flag").is_ok() {
        "coalesce(CAST(anomaly_flag AS BOOLEAN), CAST(is_anomaly AS BOOLEAN)) AS is_anomaly"
    } else {
        "CAST(is_anomaly AS BOOLEAN) AS is_anomaly"
    };
    // Each model is ranked by what its flag compares: the alert score where the row has
    // one (a rule over the card's recent scores; sql/score.sql), else its score.
    let ranked = |alert: &str, score: &str| {
        if schema.field_with_name(alert).is_ok() {
            format!("CAST(coalesce({alert}, {score}) AS DOUBLE) AS {score}")
        } else {
            column(score, "DOUBLE")
        }
    };
    let sql = format!(
        "SELECT {}, {}, {}, {}, {}, {}, CAST(is_fraud AS INT) AS is_fraud FROM archive \
         WHERE is_fraud IS NOT NULL AND score IS NOT NULL",
        column("model_id", "VARCHAR"),
        column("challenger_id", "VARCHAR"),
        ranked("alert_score", "score"),
        champion_flag,
        ranked("challenger_alert_score", "challenger_score"),
        column("challenger_flag", "BOOLEAN"),
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut pairs: BTreeMap<(Option<String>, Option<String>), Vec<Scored>> = BTreeMap::new();
    for batch in &batches {
        let text = |i: usize| {
            let column = arrow::compute::cast(batch.column(i), &DataType::Utf8)?;
            Ok::<_, arrow::error::ArrowError>(column)
        };
        let (model, challenger) = (text(0)?, text(1)?);
        let (model, challenger) = (model.as_string::<i32>(), challenger.as_string::<i32>());
        let score = batch.column(2).as_primitive::<Float64Type>();
        let flag = batch.column(3).as_boolean();
        let shadow = batch.column(4).as_primitive::<Float64Type>();
        let shadow_flag = batch.column(5).as_boolean();
        let fraud = batch.column(6).as_primitive::<Int32Type>();
        for i in 0..batch.num_rows() {
            let id = |c: &arrow::array::StringArray| c.is_valid(i).then(|| c.value(i).to_string());
            pairs
                .entry((id(model), id(challenger)))
                .or_default()
                .push(Scored {
                    score: score.value(i),
                    flag: flag.is_valid(i) && flag.value(i),
                    challenger_score: shadow.is_valid(i).then(|| shadow.value(i)),
                    challenger_flag: shadow_flag.is_valid(i) && shadow_flag.value(i),
                    is_fraud: fraud.value(i) != 0,
                });
        }
    }
    Ok(pairs)
}

fn print_table(pair: &Pair) {
    let name = |id: &Option<String>| id.clone().unwrap_or_else(|| "(no id)".to_string());
    let c = &pair.comparison;
    println!(
        "\nchampion {} vs challenger {}: {} labelled rows, {} frauds\n",
        name(&pair.champion),
        pair.challenger
            .clone()
            .unwrap_or_else(|| "(none)".to_string()),
        super::thousands(c.rows as u64),
        super::thousands(c.frauds as u64)
    );
    let shadow = c.challenger.as_ref();
    let cell = |f: &dyn Fn(&ModelFigures) -> String| shadow.map_or("–".to_string(), f);
    let ratio = |x: f64| format!("{x:.3}");
    let percent = |x: f64| format!("{:.2} %", 100.0 * x);
    println!("| | champion | challenger |");
    println!("|---|---:|---:|");
    println!(
        "| ROC-AUC | {} | {} |",
        ratio(c.champion.roc_auc),
        cell(&|f| ratio(f.roc_auc))
    );
    println!(
        "| PR-AUC | {} | {} |",
        ratio(c.champion.pr_auc),
        cell(&|f| ratio(f.pr_auc))
    );
    println!(
        "| alert rate at its own threshold | {} | {} |",
        percent(c.champion.alert_rate),
        cell(&|f| percent(f.alert_rate))
    );
    println!(
        "| recall / precision of its own flags | {} / {} | {} |",
        ratio(c.champion.recall),
        ratio(c.champion.precision),
        cell(&|f| format!("{} / {}", ratio(f.recall), ratio(f.precision)))
    );
    if let (Some(recall), Some(precision)) = (
        c.challenger_recall_at_champion_rate,
        c.challenger_precision_at_champion_rate,
    ) {
        println!(
            "| recall / precision at the champion's alert rate | {} / {} | {} / {} |",
            ratio(c.champion.recall),
            ratio(c.champion.precision),
            ratio(recall),
            ratio(precision)
        );
    }
    if let Some(overlap) = c.alert_overlap {
        println!(
            "| alerts in common (of either's, at the champion's rate) | {} | |",
            percent(overlap)
        );
    }
}
