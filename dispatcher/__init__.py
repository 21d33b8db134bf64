"""The trigger dispatcher: delivers the job's ``triggers`` to webhooks and gRPC subscribers."""
