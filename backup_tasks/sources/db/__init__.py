"""What the database sources share: server addresses (DSNs) and pipes to client tools."""
