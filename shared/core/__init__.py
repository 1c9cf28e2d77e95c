"""The lowest layer: settings, domain errors, name rules, process tuning and logs; imports no other layer."""
