"""Neural-network building blocks: the attention op and shared layers."""
