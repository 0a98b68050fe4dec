"""Pure queueing maths (M/M/1, random split, Erlang C, p2c) and predictions; imports nothing of lbbench but model."""
