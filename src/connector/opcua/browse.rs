//! `rtds browse`: the server's address space one level at a time, with
//! what a tag needs (node id, data type, whether it may be written), so
//! tags can be copied into the configuration.

use super::{Mode, OpcUa, OpcUaConfig};
use crate::connector::Connector;
use open62541::ua;

/// One child node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// The node id, as a tag's `address` takes it.
    pub node: String,
    /// Browse name (`2:Temp`).
    pub browse_name: String,
    /// Object, Variable, Method …
    pub class: String,
    /// A variable's data type (`Double`, `Int32[]`), empty otherwise.
    pub data_type: String,
    /// A variable's access: `r`, `rw`, `w`, or empty.
    pub access: String,
}

/// Lists the children of `start` (default: the Objects folder, `i=85`)
/// over the connector's own connection settings (security, login).
pub fn browse(config: &OpcUaConfig, start: Option<&str>) -> Result<Vec<Child>, String> {
    let start: ua::NodeId = start
        .unwrap_or("i=85")
        .parse()
        .map_err(|e| format!("`{}` is not a node id: {e}", start.unwrap_or_default()))?;
    let mut config = config.clone();
    // Browsing needs the session only.
    config.mode = Mode::Poll;
    config.tags.clear();
    let mut conn = OpcUa::new(std::sync::Arc::new(config));
    conn.open().map_err(|e| e.to_string())?;
    let client = conn.client().map_err(|e| e.to_string())?;
    let description = ua::BrowseDescription::default().with_node_id(&start);
    let (mut refs, mut next) = pollster::block_on(client.browse(&description))
        .map_err(|e| format!("browse {start}: {}", e.status_code().name()))?;
    while let Some(point) = next.take() {
        let mut more = pollster::block_on(client.browse_next(&[point]))
            .map_err(|e| format!("browse {start}: {}", e.status_code().name()))?;
        if let Some(Ok((r, n))) = more.pop() {
            refs.extend(r);
            next = n;
        }
    }
    let mut children: Vec<Child> = refs
        .iter()
        .map(|r| Child {
            node: r.node_id().node_id().to_string(),
            browse_name: r.browse_name().to_string(),
            class: class_name(r.node_class()).to_string(),
            data_type: String::new(),
            access: String::new(),
        })
        .collect();
    // Variables: data type, value rank and access level in one Read.
    let vars: Vec<usize> = refs
        .iter()
        .enumerate()
        .filter(|(_, r)| *r.node_class() == ua::NodeClass::VARIABLE)
        .map(|(i, _)| i)
        .collect();
    // Data type, value rank, access level and the value (some servers
    // leave the rank of an array variable at "scalar").
    const N: usize = 4;
    let mut ids = Vec::with_capacity(vars.len() * N);
    for &i in &vars {
        let n = refs[i].node_id().node_id().clone();
        ids.push((n.clone(), ua::AttributeId::DATATYPE));
        ids.push((n.clone(), ua::AttributeId::VALUERANK));
        ids.push((n.clone(), ua::AttributeId::ACCESSLEVEL));
        ids.push((n, ua::AttributeId::VALUE));
    }
    if !ids.is_empty() {
        let values = conn.read_attributes(&ids).map_err(|e| e.to_string())?;
        let client = conn.client().map_err(|e| e.to_string())?;
        for (k, &i) in vars.iter().enumerate() {
            let ty = values[N * k]
                .value()
                .and_then(|v| v.to_scalar::<ua::NodeId>())
                .map(|id| type_name(client, &id))
                .unwrap_or_default();
            let rank = values[N * k + 1]
                .value()
                .and_then(|v| v.to_scalar::<ua::Int32>())
                .map_or(-1, |r| r.value());
            let access = values[N * k + 2]
                .value()
                .and_then(|v| v.to_scalar::<ua::Byte>())
                .map_or(0, |a| a.value());
            let array = values[N * k + 3]
                .value()
                .is_some_and(|v| !v.is_empty() && !v.is_scalar());
            children[i].data_type = if rank >= 1 || array {
                format!("{ty}[]")
            } else {
                ty
            };
            children[i].access = match (access & 1 != 0, access & 2 != 0) {
                (true, true) => "rw",
                (true, false) => "r",
                (false, true) => "w",
                (false, false) => "",
            }
            .into();
        }
    }
    conn.close();
    Ok(children)
}

/// A node class's name (OPC UA Part 3, 8.29).
fn class_name(class: &ua::NodeClass) -> &'static str {
    [
        (ua::NodeClass::OBJECT, "Object"),
        (ua::NodeClass::VARIABLE, "Variable"),
        (ua::NodeClass::METHOD, "Method"),
        (ua::NodeClass::OBJECTTYPE, "ObjectType"),
        (ua::NodeClass::VARIABLETYPE, "VariableType"),
        (ua::NodeClass::REFERENCETYPE, "ReferenceType"),
        (ua::NodeClass::DATATYPE, "DataType"),
        (ua::NodeClass::VIEW, "View"),
    ]
    .into_iter()
    .find(|(c, _)| c == class)
    .map_or("?", |(_, n)| n)
}

/// A data type's name: the built-in ones by number (OPC UA Part 6, 5.1.2),
/// others by the browse name of their node.
fn type_name(client: &open62541::AsyncClient, id: &ua::NodeId) -> String {
    if let Some(n) = id.as_ns0()
        && let Some(name) = BUILT_IN.get(n as usize)
        && !name.is_empty()
    {
        return (*name).to_string();
    }
    pollster::block_on(client.read_attribute(id, ua::AttributeId::BROWSENAME_T))
        .ok()
        .and_then(|dv| dv.into_value())
        .and_then(|v| v.to_scalar::<ua::QualifiedName>())
        .map(|q| q.name().to_string())
        .unwrap_or_else(|| id.to_string())
}

/// The built-in data types by number (OPC UA Part 6, 5.1.2).
pub(super) const BUILT_IN: [&str; 26] = [
    "",
    "Boolean",
    "SByte",
    "Byte",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Float",
    "Double",
    "String",
    "DateTime",
    "Guid",
    "ByteString",
    "XmlElement",
    "NodeId",
    "ExpandedNodeId",
    "StatusCode",
    "QualifiedName",
    "LocalizedText",
    "Structure",
    "DataValue",
    "BaseDataType",
    "DiagnosticInfo",
];

/// The children as a table, and as tag lines ready to paste into a
/// connector's `tags` (variables only).
pub fn render(children: &[Child]) -> Vec<String> {
    let w = children
        .iter()
        .map(|c| c.node.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut lines = vec![format!(
        "{:w$}  {:<24} {:<10} {:<14} access",
        "node", "browse name", "class", "type"
    )];
    for c in children {
        lines.push(format!(
            "{:w$}  {:<24} {:<10} {:<14} {}",
            c.node, c.browse_name, c.class, c.data_type, c.access
        ));
    }
    let vars: Vec<&Child> = children
        .iter()
        .filter(|c| !c.data_type.is_empty())
        .collect();
    if !vars.is_empty() {
        lines.push(String::new());
        lines.push("tags (paste into the connector's `tags`):".into());
        for c in vars {
            let name = c.browse_name.rsplit(':').next().unwrap_or(&c.browse_name);
            let (ty, note) = if super::UaType::parse(&c.data_type).is_ok() {
                (format!(", type: \"{}\"", c.data_type), String::new())
            } else {
                (
                    String::new(),
                    format!("  // {}: a type RTDS cannot read (status 9)", c.data_type),
                )
            };
            let writable = if c.access.contains('w')
                && !ty.is_empty()
                && !c.data_type.starts_with("LocalizedText")
            {
                ", writable: true"
            } else {
                ""
            };
            lines.push(format!(
                "    (name: \"{name}\", address: \"{}\"{ty}{writable}),{note}",
                c.node
            ));
        }
    }
    lines
}
