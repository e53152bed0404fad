include $(sort $(wildcard $(BR2_EXTERNAL_STALLD_PATH)/package/*/*.mk))
