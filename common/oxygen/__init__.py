"""Task code of the ``cxr_ehr_oxygen_risk`` bundle: network, data pipeline helpers, reports, federated client."""
