"""What a receiver gets for one notification: a JSON document, an RFC 5424 syslog line (plain or CEF body).

Pure functions of the notification (``{"seq", "id", "transition", "alert"}``, or
``{"seq", "id", "transition": "audit", "audit"}`` for an audit entry); the
transports in this package only move the bytes.

Text from the hosts (process names, paths, users) is escaped by each format's
own rules, after control and layout characters are made visible
(:mod:`weightwarden.textsafe`): a carriage return or line feed in a process
name can neither end a CEF record nor start a forged one. JSON bodies are
ASCII-escaped by the encoder.
"""

from __future__ import annotations

import json
import time
from typing import Required, TypedDict

from weightwarden.collector import __version__
from weightwarden.collector.jsonread import as_list, as_object
from weightwarden.jsontypes import JsonObject, JsonValue
from weightwarden.textsafe import visible

# MITRE ATT&CK, where a kind of alert fits a technique (TA0010 is the Exfiltration tactic).
EXFIL_KINDS = {"exfiltration", "staged_exfiltration", "chunked_exfiltration", "slow_exfiltration"}
WEB_PORTS = {80, 443, 8080, 8443}
EXTRA_TECHNIQUES = {
    "staged_exfiltration": [("T1074", "Data Staged")],
    "chunked_exfiltration": [("T1030", "Data Transfer Size Limits")],
    "enforcement_drift": [("T1562.004", "Impair Defenses: Disable or Modify System Firewall")],
    "agent_silent": [("T1562.001", "Impair Defenses: Disable or Modify Tools")],
}
SEVERITY_CEF = {"low": 3, "medium": 5, "high": 8, "critical": 10}
SEVERITY_SYSLOG = {"low": 5, "medium": 4, "high": 3, "critical": 2}  # notice, warning, error, critical
FACILITY_LOCAL0 = 16
SD_ID = "weightwarden@32473"  # 32473: the documentation enterprise number (RFC 5612); no PEN of our own


class Notification(TypedDict, total=False):
    """One notification as the outbox hands it to a receiver: an alert's transition (``alert``: the alert as
    stored, its evidence parsed), or an entry of the audit trail (``transition`` "audit", ``audit``)."""

    seq: Required[int]
    id: Required[str]
    attempts: Required[int]
    transition: Required[str]
    epoch: int
    alert: JsonObject
    audit: JsonObject


def _number(value: JsonValue, default: float) -> float:
    return float(value) if isinstance(value, (int, float, str)) and value != "" else default


def attack(alert: JsonObject) -> list[dict[str, str]]:
    """ATT&CK techniques an alert fits: T1567 (web service) when the bytes went to web ports, else T1048."""
    kind = str(alert.get("kind", ""))
    out: list[tuple[str, str]] = []
    if kind in EXFIL_KINDS:
        ports = {as_object(d).get("port") for d in as_list(as_object(alert.get("evidence")).get("destinations"))}
        if ports & WEB_PORTS:
            out.append(("T1567", "Exfiltration Over Web Service"))
        if ports - WEB_PORTS or not ports:
            out.append(("T1048", "Exfiltration Over Alternative Protocol"))
    out.extend(EXTRA_TECHNIQUES.get(kind, []))
    return [{"technique": t, "name": n, "tactic": "TA0010" if t in ("T1048", "T1567", "T1030") else
             "TA0009" if t == "T1074" else "TA0005"} for t, n in out]


def is_audit(note: Notification) -> bool:
    return note.get("transition") == "audit"


def document(note: Notification) -> JsonObject:
    """The JSON body of webhooks and MQTT messages (schema ``weightwarden/v1/alert-notification``, or
    ``weightwarden/v1/audit-event`` for an entry of the audit trail)."""
    if is_audit(note):
        return {"schema": "weightwarden/v1/audit-event", "notification_id": note["id"], "transition": "audit",
                "audit": note.get("audit"), "sent_at": time.time()}
    alert = note.get("alert") or {}
    return {
        "schema": "weightwarden/v1/alert-notification",
        "notification_id": note["id"],
        "transition": note["transition"],
        "alert": {k: alert.get(k) for k in ("id", "key", "host", "kind", "severity", "state", "title", "explanation",
                                            "first_ts", "last_ts", "count", "assignee", "evidence")},
        "attack": [dict(t) for t in attack(alert)],
        "sent_at": time.time(),
    }


def _sd_escape(value: object) -> str:
    """An RFC 5424 PARAM-VALUE: '"', '\\' and ']' escaped (section 6.3.3), controls made visible."""
    return visible(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _cef_header(value: object) -> str:
    """A CEF header field: '\\' and '|' escaped; no line breaks (they are shown as escapes)."""
    return visible(value).replace("\\", "\\\\").replace("|", "\\|")


def _cef_ext(value: object) -> str:
    """A CEF extension value: '\\' and '=' escaped, line breaks as the format's \\n, other controls shown
    as escapes: the record stays one line whatever the value holds."""
    text = visible(str(value).replace("\r\n", "\n").replace("\r", "\n"), keep_lines=True).replace("\t", " ")
    return text.replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n")


AUDIT_CEF = {"ok": 3, "failed": 6, "refused": 7}


def cef_audit(note: Notification) -> str:
    """An audit entry as CEF: who (suser), from where (src), what (act), how it went (outcome)."""
    e = note.get("audit") or {}
    ext: JsonObject = {"rt": int(_number(e.get("ts") or time.time(), time.time()) * 1000), "externalId": note["id"],
                       "suser": e.get("user"), "act": e.get("action"), "outcome": e.get("outcome"),
                       "cs4Label": "target", "cs4": e.get("target"), "cs5Label": "via", "cs5": e.get("via"),
                       "msg": str(e.get("detail") or e.get("comment") or "")[:1000]}
    source = str(e.get("source") or "")
    ext["src" if _is_ip(source) else "cs6"] = source or None
    if "cs6" in ext:
        ext["cs6Label"] = "source"
    body = " ".join(f"{k}={_cef_ext(v)}" for k, v in ext.items() if v not in (None, ""))
    title = f"{e.get('user')} {e.get('action')} {e.get('target') or ''}".strip()
    return (f"CEF:0|weightwarden|collector|{__version__}|{_cef_header('audit:' + str(e.get('action')))}|"
            f"{_cef_header(title)}|{AUDIT_CEF.get(str(e.get('outcome')), 5)}|{body}")


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def cef(note: Notification) -> str:
    """ArcSight CEF:0, the body many SIEMs parse without a custom parser."""
    if is_audit(note):
        return cef_audit(note)
    a = note.get("alert") or {}
    ev = as_object(a.get("evidence"))
    proc = as_object(ev.get("process"))
    dests = [as_object(d) for d in as_list(ev.get("destinations"))]
    ext: JsonObject = {
        "rt": int(_number(a.get("last_ts") or time.time(), time.time()) * 1000),
        "dvchost": a.get("host"), "externalId": a.get("id"), "act": note["transition"],
        "cs1Label": "state", "cs1": a.get("state"),
        "cs2Label": "attack", "cs2": ",".join(t["technique"] for t in attack(a)),
        "cs3Label": "files", "cs3": ",".join(str(f) for f in as_list(ev.get("files"))[:5]),
        "msg": str(a.get("explanation", ""))[:1000],
    }
    if proc.get("pid") is not None:
        ext.update(spid=proc.get("pid"), sproc=proc.get("name") or proc.get("exe"))
    if proc.get("user"):
        ext["suser"] = proc["user"]
    if dests:
        ext.update(dst=dests[0].get("address"), dpt=dests[0].get("port"))
        if dests[0].get("name"):
            ext["dhost"] = dests[0]["name"]
    if ev.get("bytes_sent") is not None:
        ext["out"] = ev["bytes_sent"]
    body = " ".join(f"{k}={_cef_ext(v)}" for k, v in ext.items() if v not in (None, ""))
    return (f"CEF:0|weightwarden|collector|{__version__}|{_cef_header(a.get('kind', ''))}|"
            f"{_cef_header(a.get('title', ''))}|{SEVERITY_CEF.get(str(a.get('severity', '')), 5)}|{body}")


def _structured(note: Notification) -> tuple[int, str]:
    """(PRI, the structured data element) of a notification."""
    if is_audit(note):
        e = note.get("audit") or {}
        severity = 5 if e.get("outcome") == "ok" else 4  # notice, warning
        sd = (f'[{SD_ID} notification="{_sd_escape(note["id"])}" audit="{_sd_escape(e.get("id"))}" '
              f'action="{_sd_escape(e.get("action"))}" user="{_sd_escape(e.get("user"))}" '
              f'outcome="{_sd_escape(e.get("outcome"))}" source="{_sd_escape(e.get("source") or "-")}"]')
        return FACILITY_LOCAL0 * 8 + severity, sd
    a = note.get("alert") or {}
    techniques = ",".join(t["technique"] for t in attack(a))
    sd = (f'[{SD_ID} notification="{_sd_escape(note["id"])}" alert="{_sd_escape(a.get("id"))}" '
          f'transition="{_sd_escape(note["transition"])}" kind="{_sd_escape(a.get("kind"))}" '
          f'severity="{_sd_escape(a.get("severity"))}" host="{_sd_escape(a.get("host"))}" '
          f'attack="{techniques}"]')
    return FACILITY_LOCAL0 * 8 + SEVERITY_SYSLOG.get(str(a.get("severity", "")), 4), sd


def syslog_line(note: Notification, hostname: str, body: str = "json", procid: str = "-") -> bytes:
    """One RFC 5424 message: structured data names the alert (or the audit entry); the body is JSON or CEF."""
    pri, sd = _structured(note)
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
    msg = cef(note) if body == "cef" else json.dumps(document(note), default=str, separators=(",", ":"))
    # HOSTNAME, APP-NAME, PROCID and MSGID are PRINTUSASCII without spaces (RFC 5424 section 6).
    host = "".join(c for c in hostname if 33 <= ord(c) <= 126)[:255] or "-"
    head = f"<{pri}>1 {ts} {host} weightwarden-collector {procid[:128]} {note['transition']} {sd} "
    # BOM: RFC 5424 marks a UTF-8 MSG so.
    return head.encode() + b"\xef\xbb\xbf" + msg.encode()
