"""XMP sidecars with keywords, as darktable, digiKam and other photo managers read them.

A sidecar sits next to its photo and is named after the whole file name: ``photo.jpg.xmp`` (the
darktable and digiKam convention; never shared by ``photo.jpg`` and ``photo.png``). Keywords go in
``dc:subject`` (an ``rdf:Bag``) and in ``lr:hierarchicalSubject``, flat (no ``|`` levels added;
a keyword holding ``|`` goes to ``dc:subject`` alone, where it is not read as levels). Characters
XML cannot hold are left out of keywords.

A sidecar that exists already (darktable keeps its edit history there) is merged, never replaced:
every element, attribute, comment and processing instruction stays, and keywords it lacks are
added to its bags; a keyword it has (compared without case) is not added again. When the sidecar
has a ``dc:subject`` but no ``lr:hierarchicalSubject``, the new ``lr:hierarchicalSubject`` holds
the old keywords too: darktable imports only that property when it is present. The file is parsed
with the standard library's expat, refusing any DOCTYPE (XMP never has one, so no entity can be
declared, let alone an external one), and replaced atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from xml.dom import XMLNS_NAMESPACE, minidom
from xml.parsers import expat

from shared.core.names import fold_case

X = "adobe:ns:meta/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
LR = "http://ns.adobe.com/lightroom/1.0/"
PREFERRED_PREFIX = {RDF: "rdf", DC: "dc", LR: "lr"}
MAX_SIDECAR_BYTES = 16 * 1024 * 1024  # XMP sidecars are kilobytes; photo editors' rarely reach a megabyte

EMPTY = f"""<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="{X}" x:xmptk="tagsmith">
 <rdf:RDF xmlns:rdf="{RDF}">
  <rdf:Description rdf:about=""/>
 </rdf:RDF>
</x:xmpmeta>
"""


class XmpError(Exception):
    """A sidecar that cannot be merged (not XML, not XMP, a DOCTYPE) or written; it is left as it was."""


def sidecar_path(photo: Path) -> Path:
    """``photo.jpg`` → ``photo.jpg.xmp``, beside it."""
    return photo.with_name(photo.name + ".xmp")


def write_keywords(sidecar: Path, keywords: Sequence[str]) -> str:
    """Add ``keywords`` to the sidecar, creating it if needed. Returns what happened: "created",
    "merged" (an existing sidecar gained keywords) or "unchanged" (it had them all, or there were
    none to write: no file is created then). Raises ``XmpError`` (or ``OSError``) without touching
    the file."""
    if sidecar.is_symlink():
        # Write where the link points (the link stays), but only into an existing file in the photo's
        # own folder or below: a folder of untrusted origin could aim it at any file to rewrite it.
        target, folder = sidecar.resolve(), sidecar.parent.resolve()
        if not target.is_file() or not target.is_relative_to(folder):
            raise XmpError(f"it is a link to {target}; links are followed only to an existing file in {folder} "
                           "or below")
        sidecar = target
    original = _read_sidecar(sidecar)
    if not _unique(keywords):
        return "unchanged"
    document = _parse(original if original and original.strip() else EMPTY.encode())  # an empty file holds nothing
    if not merge_keywords(document, keywords):
        return "unchanged"
    _replace(sidecar, serialize(document))
    return "created" if original is None else "merged"


def _read_sidecar(sidecar: Path) -> bytes | None:
    """The sidecar's bytes (None: there is none), read only from a regular file of at most
    ``MAX_SIDECAR_BYTES``: a named pipe or a device in a folder of untrusted origin had made the
    command wait for good, a huge file would fill the memory."""
    try:
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(sidecar, flags)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise XmpError("it is not a regular file")
        if info.st_size > MAX_SIDECAR_BYTES:
            raise XmpError(f"it is {info.st_size:,} bytes; a sidecar this tool writes to is at most {MAX_SIDECAR_BYTES:,}")
        return file.read(MAX_SIDECAR_BYTES + 1)[:MAX_SIDECAR_BYTES]


def merge_keywords(document: minidom.Document, keywords: Iterable[str]) -> bool:
    """Add the keywords the document lacks to its ``dc:subject`` and ``lr:hierarchicalSubject``
    bags (made where missing); whether anything was added."""
    rdf_root = _first(document.documentElement, RDF, "RDF")
    if rdf_root is None:
        raise XmpError("it has no rdf:RDF element, so it is not XMP")
    descriptions = [e for e in _elements(rdf_root) if (e.namespaceURI, e.localName) == (RDF, "Description")]
    if not descriptions:
        description = document.createElementNS(RDF, _qualified(rdf_root, RDF, "Description"))
        description.setAttributeNS(RDF, _qualified(rdf_root, RDF, "about"), "")
        _append(rdf_root, description)
        descriptions = [description]
    wanted = _unique(keywords)
    subject = _property(descriptions, DC, "subject")
    hierarchy = _property(descriptions, LR, "hierarchicalSubject")
    subject_items = _items(subject)
    new = _lacking(subject_items, wanted)
    if hierarchy is None:
        # darktable imports lr:hierarchicalSubject alone when it is there: it must list the old keywords too
        additions = {(DC, "subject"): new, (LR, "hierarchicalSubject"): _flat(_unique([*subject_items, *new])) if new else []}
    else:
        additions = {(DC, "subject"): new, (LR, "hierarchicalSubject"): _flat(_lacking(_items(hierarchy), wanted))}
    changed = False
    for (namespace, name), missing in additions.items():
        if not missing:
            continue
        bag = _bag(document, descriptions[0], subject if namespace == DC else hierarchy, namespace, name)
        for keyword in missing:
            item = document.createElementNS(RDF, f"{bag.prefix}:li" if bag.prefix else "li")
            item.appendChild(document.createTextNode(keyword))
            _append(bag, item)
        changed = True
    return changed


def read_keywords(document: minidom.Document, namespace: str = DC, name: str = "subject") -> list[str]:
    """The items of a property's bag (``dc:subject`` unless told), in order."""
    rdf_root = _first(document.documentElement, RDF, "RDF")
    if rdf_root is None:
        return []
    descriptions = [e for e in _elements(rdf_root) if (e.namespaceURI, e.localName) == (RDF, "Description")]
    return _items(_property(descriptions, namespace, name))


def serialize(document: minidom.Document) -> bytes:
    """UTF-8, an XML declaration, then each top-level node (processing instructions such as the
    ``<?xpacket?>`` wrapper, comments, the root element) on a line of its own."""
    nodes = [node.toxml() for node in document.childNodes]
    return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', *nodes, ""]).encode()


def parse(data: bytes) -> minidom.Document:
    """An XMP packet's document; ``XmpError`` for a DOCTYPE or anything that is not well-formed XML."""
    return _parse(data)


# --- parsing and writing ------------------------------------------------------------------------


def _parse(data: bytes) -> minidom.Document:
    def refuse(*_: object) -> None:
        raise XmpError("it declares a DOCTYPE or entities, which XMP never does")

    guard = expat.ParserCreate(namespace_separator=" ")
    guard.StartDoctypeDeclHandler = refuse
    guard.EntityDeclHandler = refuse
    guard.UnparsedEntityDeclHandler = refuse
    guard.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    guard.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        guard.Parse(data, True)
        return minidom.parseString(data)  # checked above: no DOCTYPE, so no entities of any kind
    except expat.ExpatError as exc:
        raise XmpError(f"it is not well-formed XML: {exc}") from None


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file beside ``path`` (same permissions as ``path``, else as the umask
    allows), flush it to disk, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- the document -------------------------------------------------------------------------------


def _flat(keywords: list[str]) -> list[str]:
    """The keywords without a ``|``: in ``lr:hierarchicalSubject`` photo tools read it as a level
    ("a|=1" as "a" › "=1"), so such a keyword is written to ``dc:subject`` alone."""
    return [keyword for keyword in keywords if "|" not in keyword]


# What XML 1.0 cannot hold (C0 controls but tab and line ends, surrogates, U+FFFE and U+FFFF): a
# keyword holding one made a sidecar no XML reader, this one included, could read again.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _unique(keywords: Iterable[str]) -> list[str]:
    """The keywords, stripped of what XML cannot hold and of surrounding space, each once (case aside)."""
    seen: set[str] = set()
    out = []
    for keyword in (_NOT_XML.sub("", k).strip() for k in keywords):
        if keyword and fold_case(keyword) not in seen:
            seen.add(fold_case(keyword))
            out.append(keyword)
    return out


def _lacking(items: list[str], wanted: list[str]) -> list[str]:
    """The wanted keywords that are not among ``items``, compared without case, also with the last
    level of hierarchical items ("animals|cat" has "cat")."""
    have = {fold_case(item) for item in items} | {_leaf(item) for item in items}
    return [keyword for keyword in wanted if fold_case(keyword) not in have]


def _leaf(item: str) -> str:
    """A hierarchical keyword's last level ("animals|cat" → "cat"), case ignored as tags ignore it."""
    return fold_case(item.rsplit("|", 1)[-1].strip())


def _elements(node: minidom.Node) -> list[minidom.Element]:
    return [c for c in node.childNodes if isinstance(c, minidom.Element)]


def _first(node: minidom.Element | None, namespace: str, name: str) -> minidom.Element | None:
    if node is None:
        return None
    if (node.namespaceURI, node.localName) == (namespace, name):
        return node
    for element in node.getElementsByTagNameNS(namespace, name):
        return element
    return None


def _property(descriptions: list[minidom.Element], namespace: str, name: str) -> minidom.Element | None:
    for description in descriptions:
        for element in _elements(description):
            if (element.namespaceURI, element.localName) == (namespace, name):
                return element
    return None


def _container(prop: minidom.Element) -> minidom.Element | None:
    for element in _elements(prop):
        if element.namespaceURI == RDF and element.localName in ("Bag", "Seq", "Alt"):
            return element
    return None


def _text(node: minidom.Node) -> str:
    return "".join(c.data for c in node.childNodes if isinstance(c, minidom.Text)).strip()


def _items(prop: minidom.Element | None) -> list[str]:
    if prop is None:
        return []
    container = _container(prop)
    if container is None:  # a bare value where an array belongs: one item
        return [text] if (text := _text(prop)) else []
    return [text for li in _elements(container)
            if (li.namespaceURI, li.localName) == (RDF, "li") and (text := _text(li))]


def _bag(document: minidom.Document, description: minidom.Element, prop: minidom.Element | None,
         namespace: str, name: str) -> minidom.Element:
    """The property's container, made (with the property, on ``description``) where missing. A
    bare value where the array belongs becomes the container's first item."""
    if prop is not None and (container := _container(prop)) is not None:
        return container
    if prop is None:
        prop = document.createElementNS(namespace, _qualified(description, namespace, name))
        _append(description, prop)
        bare = ""
    else:
        bare = _text(prop)
        for child in list(prop.childNodes):
            if isinstance(child, minidom.Text):
                prop.removeChild(child)
    bag = document.createElementNS(RDF, _qualified(prop, RDF, "Bag"))
    _append(prop, bag)
    if bare:
        item = document.createElementNS(RDF, f"{bag.prefix}:li" if bag.prefix else "li")
        item.appendChild(document.createTextNode(bare))
        _append(bag, item)
    return bag


def _in_scope(element: minidom.Element) -> dict[str, str]:
    """Prefix → namespace declared on the element and its ancestors ("" for the default)."""
    chain: list[minidom.Element] = []
    node: minidom.Node | None = element
    while isinstance(node, minidom.Element):
        chain.append(node)
        node = node.parentNode
    scope: dict[str, str] = {}
    for ancestor in reversed(chain):
        for name, value in ancestor.attributes.items():
            if name == "xmlns":
                scope[""] = value
            elif name.startswith("xmlns:"):
                scope[name[6:]] = value
    return scope


def _qualified(element: minidom.Element, namespace: str, name: str) -> str:
    """``prefix:name`` for a child of ``element`` in ``namespace``, declaring a prefix on ``element``
    when none is in scope there."""
    scope = _in_scope(element)
    for prefix, uri in scope.items():
        if uri == namespace and prefix:
            return f"{prefix}:{name}"
    if scope.get("") == namespace and name != "about":  # attributes never take the default namespace
        return name
    base = PREFERRED_PREFIX.get(namespace, "ns")
    prefix, n = base, 1
    while prefix in scope:
        prefix, n = f"{base}{n}", n + 1
    element.setAttributeNS(XMLNS_NAMESPACE, f"xmlns:{prefix}", namespace)
    return f"{prefix}:{name}"


def _document(node: minidom.Node) -> minidom.Document:
    document = node.ownerDocument
    assert document is not None
    return document


def _indent_before(node: minidom.Node) -> str | None:
    """The line break and indentation in front of ``node``, if it starts a line."""
    previous = node.previousSibling
    if isinstance(previous, minidom.Text) and "\n" in previous.data and not previous.data.strip():
        return "\n" + previous.data.rsplit("\n", 1)[1]
    return None


def _append(parent: minidom.Element, child: minidom.Element) -> None:
    """Append ``child`` as ``parent``'s last element, on its own line, indented like its siblings."""
    elements = _elements(parent)
    if elements:
        indent = _indent_before(elements[0]) or ""
        after = elements[-1].nextSibling  # the closing line's indentation, or nothing
        assert after is None or isinstance(after, minidom.Text | minidom.Comment | minidom.ProcessingInstruction)
        if indent:
            parent.insertBefore(_document(parent).createTextNode(indent), after)
        parent.insertBefore(child, after)
        return
    own = _indent_before(parent)  # None: written without line breaks, and so is the child
    for text in list(parent.childNodes):  # only whitespace can be here: we never add to a text-only element
        if isinstance(text, minidom.Text) and not text.data.strip():
            parent.removeChild(text)
    document = _document(parent)
    if own is not None:
        parent.appendChild(document.createTextNode(own + " "))
    parent.appendChild(child)
    if own is not None:
        parent.appendChild(document.createTextNode(own))
