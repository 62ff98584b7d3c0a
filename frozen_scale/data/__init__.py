"""frozen_scale.data"""
