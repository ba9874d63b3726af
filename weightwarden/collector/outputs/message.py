"""What a receiver gets for one notification: a JSON document, an RFC 5424 syslog line (plain or CEF body).

Pure functions of the notification (``{"seq", "id", "transition", "alert"}``);
the transports in this package only move the bytes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from weightwarden.collector import __version__

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


def attack(alert: dict[str, Any]) -> list[dict[str, str]]:
    """ATT&CK techniques an alert fits: T1567 (web service) when the bytes went to web ports, else T1048."""
    kind = alert.get("kind", "")
    out: list[tuple[str, str]] = []
    if kind in EXFIL_KINDS:
        ports = {d.get("port") for d in (alert.get("evidence") or {}).get("destinations") or []}
        if ports & WEB_PORTS:
            out.append(("T1567", "Exfiltration Over Web Service"))
        if ports - WEB_PORTS or not ports:
            out.append(("T1048", "Exfiltration Over Alternative Protocol"))
    out.extend(EXTRA_TECHNIQUES.get(kind, []))
    return [{"technique": t, "name": n, "tactic": "TA0010" if t in ("T1048", "T1567", "T1030") else
             "TA0009" if t == "T1074" else "TA0005"} for t, n in out]


def document(note: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of webhooks and MQTT messages (schema ``weightwarden/v1/alert-notification``)."""
    alert = note["alert"]
    return {
        "schema": "weightwarden/v1/alert-notification",
        "notification_id": note["id"],
        "transition": note["transition"],
        "alert": {k: alert.get(k) for k in ("id", "key", "host", "kind", "severity", "state", "title", "explanation",
                                            "first_ts", "last_ts", "count", "assignee", "evidence")},
        "attack": attack(alert),
        "sent_at": time.time(),
    }


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _cef_header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _cef_ext(value: str) -> str:
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("\r", " ").replace("\n", " ")


def cef(note: dict[str, Any]) -> str:
    """ArcSight CEF:0, the body many SIEMs parse without a custom parser."""
    a = note["alert"]
    ev = a.get("evidence") or {}
    proc = ev.get("process") or {}
    dests = ev.get("destinations") or []
    ext: dict[str, Any] = {
        "rt": int(float(a.get("last_ts") or time.time()) * 1000),
        "dvchost": a.get("host"), "externalId": a.get("id"), "act": note["transition"],
        "cs1Label": "state", "cs1": a.get("state"),
        "cs2Label": "attack", "cs2": ",".join(t["technique"] for t in attack(a)),
        "cs3Label": "files", "cs3": ",".join((ev.get("files") or [])[:5]),
        "msg": a.get("explanation", "")[:1000],
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
    body = " ".join(f"{k}={_cef_ext(str(v))}" for k, v in ext.items() if v not in (None, ""))
    return (f"CEF:0|weightwarden|collector|{__version__}|{_cef_header(a.get('kind', ''))}|"
            f"{_cef_header(a.get('title', ''))}|{SEVERITY_CEF.get(a.get('severity', ''), 5)}|{body}")


def syslog_line(note: dict[str, Any], hostname: str, body: str = "json", procid: str = "-") -> bytes:
    """One RFC 5424 message: structured data names the alert; the body is JSON or CEF."""
    a = note["alert"]
    pri = FACILITY_LOCAL0 * 8 + SEVERITY_SYSLOG.get(a.get("severity", ""), 4)
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
    techniques = ",".join(t["technique"] for t in attack(a))
    sd = (f'[{SD_ID} notification="{_sd_escape(note["id"])}" alert="{_sd_escape(str(a.get("id")))}" '
          f'transition="{note["transition"]}" kind="{_sd_escape(str(a.get("kind")))}" '
          f'severity="{_sd_escape(str(a.get("severity")))}" host="{_sd_escape(str(a.get("host")))}" '
          f'attack="{techniques}"]')
    msg = cef(note) if body == "cef" else json.dumps(document(note), default=str, separators=(",", ":"))
    head = f"<{pri}>1 {ts} {hostname[:255] or '-'} weightwarden-collector {procid[:128]} {note['transition']} {sd} "
    # BOM: RFC 5424 marks a UTF-8 MSG so.
    return head.encode() + b"\xef\xbb\xbf" + msg.encode()
