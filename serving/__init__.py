"""gRPC serving: recommendations, user profiles and event collection."""
