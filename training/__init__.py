"""GRU4Rec training, evaluation and export."""
