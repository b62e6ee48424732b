DROP TABLE call_reconcile_checks;
DROP TABLE leases;
