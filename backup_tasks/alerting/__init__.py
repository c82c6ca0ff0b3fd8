"""Alerting: every event worth telling someone about becomes a notification (apprise).

    events.emit(...)                      a failure, a refusal, a watchdog finding
      └─ the notifier                      set by ops/runtime.py: the process's settings and targets
           └─ dispatch.on_event            config has [settings] alerts = ["mailto://...", ...]?
                ├─ messages.from_event     target, host, run id, what happened, next step (a command)
                ├─ catalog.claim_alert     identical alerts: one per alert_repeat_minutes, across processes
                ├─ redact.Redactor         masks credential values and URL passwords
                └─ channels.deliver        one apprise URL at a time; failures logged, never raised

Conditions found by the watchdog (RPO breach, low space, missing mount) are alerted
once when they open and once more ("resolved") when they clear; see ops/watchdog.py.
"""

from backup_tasks.alerting.dispatch import CHANNEL_FAILED, Delivery, notify_verified, on_event, send
from backup_tasks.alerting.messages import Alert, from_event

__all__ = ["Alert", "Delivery", "CHANNEL_FAILED", "from_event", "notify_verified", "on_event", "send"]
