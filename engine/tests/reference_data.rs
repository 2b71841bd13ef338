//! The full Sparkov reference files in ../shared/data parse without loss. They are not in
//! a user's clone, so these tests are `#[ignore]`d by default; `scripts/test.sh` runs them
//! (with `--ignored`) whenever ../shared/data is present, and says so when it is not.

mod common;

use std::io::Read;

use risksense_formats::codec::csv::{CsvTransactionReader, CsvTransactionWriter};
use risksense_formats::source::read_all;

fn shared(name: &str) -> std::path::PathBuf {
    let path = common::repo_root().join("../shared/data").join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

fn check_file(name: &str, rows: usize, frauds: u64) {
    let path = shared(name);
    let mut text = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).expect("open"))
        .read_to_end(&mut text)
        .expect("gunzip");
    let batches: Vec<_> = CsvTransactionReader::new(&text[..], 8192, false)
        .expect("header")
        .collect::<Result<_, _>>()
        .expect("every row parses");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), rows);
    let fraud: u64 = batches
        .iter()
        .map(|b| {
            use arrow::array::AsArray;
            b.column(risksense_common::schema::idx::IS_FRAUD)
                .as_primitive::<arrow::datatypes::Int32Type>()
                .values()
                .iter()
                .map(|&v| v as u64)
                .sum::<u64>()
        })
        .sum();
    assert_eq!(fraud, frauds);
    let mut writer = CsvTransactionWriter::new(Vec::new());
    for batch in &batches {
        writer.write(batch).expect("write");
    }
    assert!(
        writer.finish().expect("finish") == text,
        "{name} does not write back byte for byte"
    );
    // The .csv.gz path of the file reader gives the same rows.
    assert_eq!(
        common::concat(&read_all(&path).expect("reads")),
        common::concat(&batches)
    );
}

#[test]
#[ignore = "needs ../shared/data; scripts/test.sh runs it when present"]
fn sparkov_2019h1_parses_without_loss() {
    check_file("sparkov-2019h1.csv.gz", 211_860, 2_440);
}

#[test]
#[ignore = "needs ../shared/data; scripts/test.sh runs it when present"]
fn sparkov_2019q3_parses_without_loss() {
    check_file("sparkov-2019q3.csv.gz", 127_936, 1_258);
}
