//! RiskSense's ONNX graphs: the protobuf messages our models use (field numbers from
//! onnx.proto), encoded and decoded with prost, a [`GraphBuilder`] the trainer writes its
//! exports with, and [`keep_outputs`], which the scorer applies to them. Writing the
//! messages ourselves keeps protoc and a large ONNX crate out of the build; ONNX Runtime
//! loading the result is the test of it.

use prost::Message;

/// The `producer_name` of the models we write.
pub const PRODUCER: &str = "risksense";
pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;
/// The domain of the classical machine-learning operators (tree ensembles), and the
/// version of it we write: TreeEnsembleRegressor as ONNX Runtime runs it from version 3.
pub const ML_DOMAIN: &str = "ai.onnx.ml";
pub const ML_OPSET: i64 = 3;
const FLOAT: i32 = 1;
const INT64: i32 = 7;
const ATTRIBUTE_FLOAT: i32 = 1;
const ATTRIBUTE_INT: i32 = 2;
const ATTRIBUTE_STRING: i32 = 3;
const ATTRIBUTE_FLOATS: i32 = 6;
const ATTRIBUTE_INTS: i32 = 7;
const ATTRIBUTE_STRINGS: i32 = 8;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Empty: the default ONNX domain.
    #[prost(string, tag = "7")]
    pub domain: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// A dimension: a fixed size, or a named symbolic one (`rows`).
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// Builds a graph node by node.
#[derive(Default)]
pub struct GraphBuilder {
    graph: GraphProto,
}

impl GraphBuilder {
    pub fn input(&mut self, name: &str, dims: &[Dim]) {
        self.graph.input.push(value_info(name, dims));
    }

    pub fn output(&mut self, name: &str, dims: &[Dim]) {
        self.graph.output.push(value_info(name, dims));
    }

    /// A float constant (weights, biases, standardisation).
    pub fn constant(&mut self, name: &str, dims: &[i64], values: &[f32]) {
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type: FLOAT,
            name: name.to_string(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }

    /// An int64 constant (shapes, axes).
    pub fn constant_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) {
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type: INT64,
            name: name.to_string(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }

    /// `output` = the columns `indices` of the matrix `input` (an int64 constant named
    /// `indices_name`, then a Gather along axis 1).
    pub fn gather_columns(
        &mut self,
        input: &str,
        indices_name: &str,
        indices: &[i64],
        output: &str,
    ) {
        self.gather(input, indices_name, indices, 1, output);
    }

    /// `output` = the rows `indices` of the matrix `input` (a Gather along axis 0).
    pub fn gather_rows(&mut self, input: &str, indices_name: &str, indices: &[i64], output: &str) {
        self.gather(input, indices_name, indices, 0, output);
    }

    fn gather(
        &mut self,
        input: &str,
        indices_name: &str,
        indices: &[i64],
        axis: i64,
        output: &str,
    ) {
        self.constant_i64(indices_name, &[indices.len() as i64], indices);
        self.node_with(
            "Gather",
            &[input, indices_name],
            output,
            vec![int_attribute("axis", axis)],
        );
    }

    /// `output` = the matrix `input` transposed.
    pub fn transpose(&mut self, input: &str, output: &str) {
        self.node_with(
            "Transpose",
            &[input],
            output,
            vec![ints_attribute("perm", &[1, 0])],
        );
    }

    /// `output` = min(max(`input`, `low`), `high`) element-wise, the bounds broadcast (ONNX's
    /// Clip takes scalar bounds only; these are per feature).
    pub fn clamp(&mut self, input: &str, low: &str, high: &str, output: &str) {
        let raised = format!("{output}_above_low");
        self.node("Max", &[input, low], &raised);
        self.node("Min", &[&raised, high], output);
    }

    pub fn node(&mut self, op: &str, inputs: &[&str], output: &str) {
        self.node_with(op, inputs, output, Vec::new());
    }

    pub fn node_with(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        self.node_in("", op, inputs, output, attribute);
    }

    /// A node of an operator of `domain` (e.g. [`ML_DOMAIN`]); the model then imports
    /// that domain at [`ML_OPSET`].
    pub fn node_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        let index = self.graph.node.len();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: format!("{op}_{index}"),
            op_type: op.to_string(),
            attribute,
            domain: domain.to_string(),
        });
    }

    pub fn finish(mut self, name: &str, doc: &str) -> Vec<u8> {
        self.graph.name = name.to_string();
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }];
        if self.graph.node.iter().any(|n| n.domain == ML_DOMAIN) {
            opset_import.push(OperatorSetIdProto {
                domain: ML_DOMAIN.to_string(),
                version: ML_OPSET,
            });
        }
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: PRODUCER.to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            doc_string: doc.to_string(),
            graph: Some(self.graph),
            opset_import,
        }
        .encode_to_vec()
    }
}

pub fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        i: value,
        r#type: ATTRIBUTE_INT,
        ..Default::default()
    }
}

pub fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        ints: values.to_vec(),
        r#type: ATTRIBUTE_INTS,
        ..Default::default()
    }
}

pub fn float_attribute(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        f: value,
        r#type: ATTRIBUTE_FLOAT,
        ..Default::default()
    }
}

pub fn floats_attribute(name: &str, values: &[f32]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        floats: values.to_vec(),
        r#type: ATTRIBUTE_FLOATS,
        ..Default::default()
    }
}

pub fn string_attribute(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        s: value.as_bytes().to_vec(),
        r#type: ATTRIBUTE_STRING,
        ..Default::default()
    }
}

pub fn strings_attribute(name: &str, values: &[&str]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        strings: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
        r#type: ATTRIBUTE_STRINGS,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(v) => Dimension {
                                dim_value: Some(*v),
                                dim_param: None,
                            },
                            Dim::Named(n) => Dimension {
                                dim_value: None,
                                dim_param: Some(n.to_string()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// Our model `model` (ONNX bytes) cut down to what computes `keep`, its other outputs and
/// the nodes and constants only they need left out; `None` for a model another tool
/// wrote, one without all of `keep`, or one with nothing to leave out.
///
/// Why: ONNX Runtime runs every node of a graph whichever outputs a call asks for, and
/// the anomaly score needs only part of the autoencoder's graph (its reconstruction and
/// per-feature errors are for explanations): the scoring path would pay for all of it.
/// Only a model these messages read back to exactly its bytes is cut (ours are written
/// by them): in any other, decoding would drop what they do not hold (subgraphs,
/// external data, metadata), and the cut graph would not mean the same.
pub fn keep_outputs(model: &[u8], keep: &[&str]) -> Result<Option<Vec<u8>>, prost::DecodeError> {
    // The producer alone first: another tool's weights are skipped, not copied.
    if Producer::decode(model)?.producer_name != PRODUCER || keep.is_empty() {
        return Ok(None);
    }
    let mut proto = ModelProto::decode(model)?;
    if proto.encode_to_vec() != model {
        return Ok(None);
    }
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(None);
    };
    if !keep
        .iter()
        .all(|name| graph.output.iter().any(|o| o.name == *name))
    {
        return Ok(None);
    }
    // Graph inputs stay, and so do constants that are also inputs (their defaults).
    let mut needed: std::collections::HashSet<String> = keep
        .iter()
        .map(|name| name.to_string())
        .chain(graph.input.iter().map(|i| i.name.clone()))
        .collect();
    let before = (graph.node.len(), graph.output.len());
    let mut nodes = Vec::with_capacity(graph.node.len());
    for node in graph.node.drain(..).rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            needed.extend(node.input.iter().cloned());
            nodes.push(node);
        }
    }
    nodes.reverse();
    graph.node = nodes;
    graph.output.retain(|o| keep.contains(&o.name.as_str()));
    if (graph.node.len(), graph.output.len()) == before {
        return Ok(None);
    }
    graph.initializer.retain(|t| needed.contains(&t.name));
    Ok(Some(proto.encode_to_vec()))
}

/// A model's `producer_name`, read without its graph.
#[derive(Clone, PartialEq, Message)]
struct Producer {
    #[prost(string, tag = "2")]
    producer_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x → a = x + 1 → `kept` = a · 2, and → `dropped` = a − c (c used only there).
    fn two_outputs() -> Vec<u8> {
        let mut g = GraphBuilder::default();
        g.input("x", &[Dim::Named("rows"), Dim::Fixed(2)]);
        g.constant("one", &[], &[1.0]);
        g.constant("two", &[], &[2.0]);
        g.constant("c", &[2], &[3.0, 4.0]);
        g.node("Add", &["x", "one"], "a");
        g.node("Sub", &["a", "c"], "dropped");
        g.node("Mul", &["a", "two"], "kept");
        g.output("kept", &[Dim::Named("rows"), Dim::Fixed(2)]);
        g.output("dropped", &[Dim::Named("rows"), Dim::Fixed(2)]);
        g.finish("two", "test")
    }

    #[test]
    fn keeps_what_the_outputs_need_and_nothing_else() {
        let pruned = keep_outputs(&two_outputs(), &["kept"])
            .expect("decodes")
            .expect("ours, with that output");
        let graph = ModelProto::decode(pruned.as_slice())
            .expect("decodes")
            .graph
            .expect("a graph");
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Add", "Mul"], "in their order, without the Sub");
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["kept"]);
        let constants: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(constants, ["one", "two"]);
        assert_eq!(graph.input.len(), 1);
    }

    #[test]
    fn a_constant_that_is_also_an_input_keeps_its_default() {
        let mut g = GraphBuilder::default();
        g.input("x", &[Dim::Fixed(2)]);
        g.input("c", &[Dim::Fixed(2)]);
        g.constant("c", &[2], &[3.0, 4.0]);
        g.node("Sub", &["x", "c"], "dropped");
        g.node("Neg", &["x"], "kept");
        g.output("kept", &[Dim::Fixed(2)]);
        g.output("dropped", &[Dim::Fixed(2)]);
        let pruned = keep_outputs(&g.finish("c", "test"), &["kept"])
            .expect("decodes")
            .expect("cut");
        let graph = ModelProto::decode(pruned.as_slice())
            .expect("decodes")
            .graph
            .expect("a graph");
        assert_eq!(graph.node.len(), 1);
        assert_eq!(graph.input.len(), 2);
        assert_eq!(
            graph.initializer.len(),
            1,
            "c's default stays with its input"
        );
    }

    #[test]
    fn another_tools_model_or_a_missing_output_is_left_alone() {
        let mut foreign = ModelProto::decode(two_outputs().as_slice()).expect("decodes");
        foreign.producer_name = "pytorch".to_string();
        let foreign = foreign.encode_to_vec();
        assert_eq!(keep_outputs(&foreign, &["kept"]).expect("decodes"), None);
        assert_eq!(
            keep_outputs(&two_outputs(), &["kept", "score"]).expect("decodes"),
            None
        );
        // Nothing to leave out, or nothing asked for.
        assert_eq!(
            keep_outputs(&two_outputs(), &["kept", "dropped"]).expect("decodes"),
            None
        );
        assert_eq!(keep_outputs(&two_outputs(), &[]).expect("decodes"), None);
        // Ours by name, with a field these messages do not hold (ModelProto's
        // metadata_props, 14): cutting it would lose the field, so it is left whole.
        let mut extended = two_outputs();
        extended.extend_from_slice(&[14 << 3 | 2, 2, 10, 0]);
        assert_eq!(keep_outputs(&extended, &["kept"]).expect("decodes"), None);
        assert!(keep_outputs(b"\xff\xff not protobuf", &["kept"]).is_err());
    }
}
